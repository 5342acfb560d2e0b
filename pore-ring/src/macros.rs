//! `SharedRing` implementations shared by the ring types.

/// `SharedRing` for a producer half: nothing is ever readable through it.
#[macro_export]
#[doc(hidden)]
macro_rules! impl_shared_ring_for_writer {
    ($ty:ident) => {
        impl<A: pore_core::SharedAccess> $ty<A> {
            /// Copies up to `buf.len()` bytes into the ring and publishes them (the same as
            /// [`RingWriter::write`](crate::RingWriter::write); inherent so that having both
            /// traits in scope is not ambiguous).
            ///
            /// # Errors
            ///
            /// A ring error if the peer broke the ring.
            #[inline]
            pub fn write(&mut self, buf: &[u8]) -> Result<usize, $crate::RingError> {
                $crate::RingWriter::write(self, buf)
            }

            /// Bytes that can be written now.
            ///
            /// # Errors
            ///
            /// A ring error if the peer broke the ring.
            pub fn writable(&self) -> Result<usize, $crate::RingError> {
                $crate::RingWriter::writable(self)
            }

            /// Whether the peer must be notified; clears the need.
            pub fn take_notify(&mut self) -> bool {
                $crate::RingWriter::take_notify(self)
            }
        }

        impl<A: pore_core::SharedAccess> pore_core::SharedRing for $ty<A> {
            type Error = $crate::RingError;
            fn readable(&self) -> Result<usize, $crate::RingError> {
                Ok(0)
            }
            fn writable(&self) -> Result<usize, $crate::RingError> {
                $crate::RingWriter::writable(self)
            }
            fn read(&mut self, _buf: &mut [u8]) -> Result<usize, $crate::RingError> {
                Ok(0)
            }
            fn write(&mut self, buf: &[u8]) -> Result<usize, $crate::RingError> {
                $crate::RingWriter::write(self, buf)
            }
            fn take_notify(&mut self) -> bool {
                $crate::RingWriter::take_notify(self)
            }
            fn prepare_wait(
                &mut self,
                interest: pore_core::Interest,
            ) -> Result<bool, $crate::RingError> {
                match interest {
                    pore_core::Interest::Writable => $crate::RingWriter::prepare_wait(self),
                    pore_core::Interest::Readable => Err($crate::RingError::InvalidInput(
                        "a producer half cannot wait to read",
                    )),
                }
            }
        }
    };
}

/// `SharedRing` for a consumer half: nothing is ever writable through it.
#[macro_export]
#[doc(hidden)]
macro_rules! impl_shared_ring_for_reader {
    ($ty:ident) => {
        impl<A: pore_core::SharedAccess> $ty<A> {
            /// Copies up to `buf.len()` bytes out of the ring and releases them (the same as
            /// [`RingReader::read`](crate::RingReader::read); inherent so that having both
            /// traits in scope is not ambiguous).
            ///
            /// # Errors
            ///
            /// A ring error if the peer broke the ring.
            #[inline]
            pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, $crate::RingError> {
                $crate::RingReader::read(self, buf)
            }

            /// Bytes that can be read now.
            ///
            /// # Errors
            ///
            /// A ring error if the peer broke the ring.
            pub fn readable(&self) -> Result<usize, $crate::RingError> {
                $crate::RingReader::readable(self)
            }

            /// Whether the peer must be notified; clears the need.
            pub fn take_notify(&mut self) -> bool {
                $crate::RingReader::take_notify(self)
            }
        }

        impl<A: pore_core::SharedAccess> pore_core::SharedRing for $ty<A> {
            type Error = $crate::RingError;
            fn readable(&self) -> Result<usize, $crate::RingError> {
                $crate::RingReader::readable(self)
            }
            fn writable(&self) -> Result<usize, $crate::RingError> {
                Ok(0)
            }
            fn read(&mut self, buf: &mut [u8]) -> Result<usize, $crate::RingError> {
                $crate::RingReader::read(self, buf)
            }
            fn write(&mut self, _buf: &[u8]) -> Result<usize, $crate::RingError> {
                Ok(0)
            }
            fn take_notify(&mut self) -> bool {
                $crate::RingReader::take_notify(self)
            }
            fn prepare_wait(
                &mut self,
                interest: pore_core::Interest,
            ) -> Result<bool, $crate::RingError> {
                match interest {
                    pore_core::Interest::Readable => $crate::RingReader::prepare_wait(self),
                    pore_core::Interest::Writable => Err($crate::RingError::InvalidInput(
                        "a consumer half cannot wait to write",
                    )),
                }
            }
        }
    };
}

/// `SharedRing` for a full ring with `tx` (a [`RingWriter`]) and `rx` (a [`RingReader`]) fields.
#[macro_export]
#[doc(hidden)]
macro_rules! impl_shared_ring_for_pair {
    ($ty:ident) => {
        impl<A: pore_core::SharedAccess> pore_core::SharedRing for $ty<A> {
            type Error = $crate::RingError;
            fn readable(&self) -> Result<usize, $crate::RingError> {
                $crate::RingReader::readable(&self.rx)
            }
            fn writable(&self) -> Result<usize, $crate::RingError> {
                $crate::RingWriter::writable(&self.tx)
            }
            fn read(&mut self, buf: &mut [u8]) -> Result<usize, $crate::RingError> {
                $crate::RingReader::read(&mut self.rx, buf)
            }
            fn write(&mut self, buf: &[u8]) -> Result<usize, $crate::RingError> {
                $crate::RingWriter::write(&mut self.tx, buf)
            }
            fn take_notify(&mut self) -> bool {
                // Both halves' needs are cleared.
                let tx = $crate::RingWriter::take_notify(&mut self.tx);
                let rx = $crate::RingReader::take_notify(&mut self.rx);
                tx | rx
            }
            fn prepare_wait(
                &mut self,
                interest: pore_core::Interest,
            ) -> Result<bool, $crate::RingError> {
                match interest {
                    pore_core::Interest::Readable => $crate::RingReader::prepare_wait(&mut self.rx),
                    pore_core::Interest::Writable => $crate::RingWriter::prepare_wait(&mut self.tx),
                }
            }
        }
    };
}
