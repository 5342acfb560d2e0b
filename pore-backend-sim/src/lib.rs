//! A simulated Xen on plain Linux: domains as threads or processes, grants as shared memory,
//! event channels as eventfds, with an embedded xenstored (filled in by the pore-backend-sim issue).
