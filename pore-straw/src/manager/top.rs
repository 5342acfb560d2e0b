//! Keeping our straw top usable: junk children removed, a poisoned or full top rebuilt, and
//! knocks checked as genuine before anything is granted (see
//! [`ManagerConfig::top_check_interval`]).

use super::*;

impl<B, X> Inner<B, X>
where
    B: Backend + Send + Sync + 'static,
    B::Channel: 'static,
    X: StoreClient,
{
    /// Whether a watch event of our straw top names a child that cannot be a peer's straw
    /// directory (see [`Inner::check_top`]).
    pub(super) fn is_junk_event(&self, path: &str) -> bool {
        let top = self.me.straw_top();
        let Some(rest) = path
            .strip_prefix(top.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        let name = rest.split('/').next().unwrap_or("");
        name != PROBE && !self.is_peer_ident(name)
    }

    pub(super) fn is_peer_ident(&self, name: &str) -> bool {
        Endpoint::parse_ident(name).is_ok_and(|p| p != self.me)
    }

    /// Keeps our straw top usable (issue 10, item 7). Everyone may write in it (the seed's
    /// `b<me>`), so a domain can leave children there that are no peer's straw directory, or
    /// fill it: C xenstored limits a node's record, child names included, to 2048 bytes, and a
    /// full top refuses every opener's `mkdir` (ENOSPC). And a child whose creator narrowed its
    /// permissions cannot be removed by us. So, every [`ManagerConfig::top_check_interval`]
    /// (sooner after an event naming such a child):
    ///
    /// 1. list the top; a child whose name is no peer's ident is junk: remove it. A child
    ///    named as a peer's that is not one of our straws for a whole interval is stale: its
    ///    knock (if it has one, and the knock's event was late or lost) is taken now, else
    ///    (no knock, or refused) it is removed, and its opener, if any, sees it go.
    /// 2. If some junk could not be removed (poisoned), or if the top is full (a probe
    ///    `mkdir` fails), rebuild the top: the owner of a node may remove it with everything
    ///    below, whatever its children's permissions. One transaction removes the top,
    ///    creates it again and carries over the directories of our straws (handshaking or
    ///    connected) and of genuine knocks not taken yet, with their keys, while our straws'
    ///    own xenstore operations wait: their peers, who watch those directories, see the
    ///    same values before and after. The directories carried over are ours afterwards
    ///    (`n<me> b<peer>`, keys `n<me> r<peer>`), still visible to the pair only.
    pub(super) fn check_top(self: &Arc<Self>, stale: &mut BTreeMap<String, Instant>) {
        let top = self.me.straw_top();
        let names = match self
            .store
            .perform(&StoreOp::Directory { path: top.clone() })
        {
            Ok(StoreReply::Children(n)) => n,
            Err(StoreError::NotFound) => {
                self.restore_top();
                return;
            }
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(me = %self.me, error = %e, "strawman: cannot list the straw top");
                return;
            }
        };
        let ours: BTreeSet<String> = lock(&self.state)
            .straws
            .keys()
            .filter(|(_, r)| *r == Role::Listener)
            .map(|(p, _)| p.ident())
            .collect();
        let (mut poisoned, mut unknown) = (false, false);
        let mut next_stale = BTreeMap::new();
        for name in &names {
            if ours.contains(name) {
                continue;
            }
            unknown = true;
            let path = std::format!("{top}/{name}");
            if let Ok(peer) = Endpoint::parse_ident(name).map_err(drop).and_then(|p| {
                if p == self.me {
                    Err(())
                } else {
                    Ok(p)
                }
            }) {
                let since = stale.get(name).copied().unwrap_or_else(Instant::now);
                if since.elapsed() < self.cfg.top_check_interval {
                    // A knock on its way in, or an opener making its directory: look later.
                    next_stale.insert(name.clone(), since);
                    continue;
                }
                let knock = std::format!("{path}/warts");
                if self.store.perform(&StoreOp::Read { path: knock }).is_ok()
                    && self.take_knock(peer)
                {
                    continue;
                }
            }
            match self.store.perform(&StoreOp::Rm { path }) {
                Ok(_) | Err(StoreError::NotFound) => {
                    tracing::info!(me = %self.me, child = %Short(name), "strawman: junk removed from the straw top");
                    lock(&self.state).junk_removed += 1;
                }
                Err(e) => {
                    tracing::warn!(me = %self.me, child = %Short(name), error = %e, "strawman: junk in the straw top cannot be removed");
                    poisoned = true;
                }
            }
        }
        *stale = next_stale;
        let full = unknown && !poisoned && self.top_is_full(&top);
        if poisoned || full {
            self.rebuild_top(if poisoned { "poisoned" } else { "full" });
        }
    }

    /// Makes our straw top again (`b<me>`, as [`setup_ops`] does) after another domain
    /// removed it (see [`ManagerConfig::top_check_interval`]). Its straws went with it: their
    /// machines see their directories gone. Not once the manager stops (its teardown removes
    /// the top, under the same gate).
    fn restore_top(&self) {
        let _gate = self.store_gate.write().unwrap_or_else(|p| p.into_inner());
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        let top = self.me.straw_top();
        let ops = [
            StoreOp::Mkdir { path: top.clone() },
            StoreOp::SetPerms {
                path: top,
                perms: std::vec![Perm::new(Access::Both, self.me.domid)],
                best_effort: false,
            },
        ];
        match self.store.perform(&StoreOp::Transaction(ops.to_vec())) {
            Ok(_) => {
                tracing::warn!(me = %self.me, "strawman: straw top removed by another domain: made again");
                lock(&self.state).rebuilds += 1;
            }
            Err(e) => {
                tracing::warn!(me = %self.me, error = %e, "strawman: making the removed straw top again failed");
            }
        }
    }

    pub(super) fn list_top(&self) -> Option<Vec<String>> {
        match self.store.perform(&StoreOp::Directory {
            path: self.me.straw_top(),
        }) {
            Ok(StoreReply::Children(n)) => Some(n),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(me = %self.me, error = %e, "strawman: cannot list the straw top");
                None
            }
        }
    }

    /// Whether a new child cannot be made in our top (what an opener's `mkdir` would meet).
    pub(super) fn top_is_full(&self, top: &str) -> bool {
        let probe = std::format!("{top}/{PROBE}");
        match self.store.perform(&StoreOp::Mkdir {
            path: probe.clone(),
        }) {
            Ok(_) => {
                let _ = self.store.perform(&StoreOp::Rm { path: probe });
                false
            }
            Err(StoreError::Other(_) | StoreError::PermissionDenied) => true,
            Err(_) => false,
        }
    }

    /// Rebuilds our straw top (see [`Inner::check_top`]).
    pub(super) fn rebuild_top(&self, why: &str) {
        // Our straws' own operations wait meanwhile: nothing they write can be lost.
        let _gate = self.store_gate.write().unwrap_or_else(|p| p.into_inner());
        let Some(names) = self.list_top() else {
            return;
        };
        let ours: BTreeSet<String> = lock(&self.state)
            .straws
            .keys()
            .filter(|(_, r)| *r == Role::Listener)
            .map(|(p, _)| p.ident())
            .collect();
        let top = self.me.straw_top();
        let me = self.me.domid;
        let narrow = |path: String, peer: DomId, access: Access| StoreOp::SetPerms {
            path,
            perms: std::vec![Perm::new(Access::None, me), Perm::new(access, peer)],
            best_effort: true,
        };
        let mut ops = std::vec![
            StoreOp::Rm { path: top.clone() },
            StoreOp::Mkdir { path: top.clone() },
            StoreOp::SetPerms {
                path: top.clone(),
                perms: std::vec![Perm::new(Access::Both, me)],
                best_effort: false,
            },
        ];
        let mut kept = 0usize;
        for name in &names {
            let Ok(peer) = Endpoint::parse_ident(name) else {
                continue;
            };
            if peer == self.me {
                continue;
            }
            let dir = std::format!("{top}/{name}");
            let ours = ours.contains(name);
            if !ours {
                // A knock not taken yet: only a genuine one (the directory is the peer's).
                match self.store.perform(&StoreOp::GetPerms { path: dir.clone() }) {
                    Ok(StoreReply::Perms(p)) if p.first().map(|p| p.domid) == Some(peer.domid) => {}
                    _ => continue,
                }
            }
            let mut keys = Vec::new();
            for key in STRAW_KEYS {
                let path = std::format!("{dir}/{key}");
                if let Ok(StoreReply::Value(v)) = self.store.perform(&StoreOp::Read { path }) {
                    if let Ok(v) = String::from_utf8(v) {
                        keys.push((key, v));
                    }
                }
            }
            if !ours && !keys.iter().any(|(k, _)| *k == "warts") {
                continue;
            }
            kept += 1;
            ops.push(StoreOp::Mkdir { path: dir.clone() });
            ops.push(narrow(dir.clone(), peer.domid, Access::Both));
            for (key, value) in keys {
                let path = std::format!("{dir}/{key}");
                ops.push(StoreOp::Write {
                    path: path.clone(),
                    value,
                });
                ops.push(narrow(path, peer.domid, Access::Read));
            }
        }
        match self.store.perform(&StoreOp::Transaction(ops)) {
            Ok(_) => {
                tracing::warn!(me = %self.me, why, kept, dropped = names.len() - kept, "strawman: straw top rebuilt");
                lock(&self.state).rebuilds += 1;
            }
            Err(e) => {
                tracing::warn!(me = %self.me, why, error = %e, "strawman: rebuilding the straw top failed");
            }
        }
    }

    /// Whether a knock under `peer`'s ident really comes from `peer`'s domain (every domain may
    /// write in our straw top, under any ident). The owner of the knock directory tells: C
    /// xenstored makes its creator the owner, and the opener's D18 narrowing keeps it
    /// (`n<opener> b<us>`). oxenstored keeps the parent's owner (us) on new nodes and refuses
    /// the narrowing, so there the owner names nobody: then the ACL must not name another
    /// domain than the peer, and the knock is taken on trust (the admission check and the
    /// handshake, which reads the peer's own tree, remain). A forged knock is refused before
    /// any thread starts or page is granted, and its directory removed if we may.
    pub(super) fn knock_is_genuine(&self, peer: &Endpoint) -> bool {
        let dir = std::format!("{}/{}", self.me.straw_top(), peer.ident());
        let perms = match self.store.perform(&StoreOp::GetPerms { path: dir.clone() }) {
            Ok(StoreReply::Perms(p)) => p,
            Err(StoreError::NotFound) => {
                tracing::debug!(me = %self.me, %peer, "strawman: knock vanished");
                return false;
            }
            Ok(_) | Err(_) => {
                tracing::warn!(me = %self.me, %peer, "strawman: knock refused: its directory's owner cannot be read");
                return false;
            }
        };
        let owner = perms.first().map(|p| p.domid);
        let verdict = match owner {
            Some(o) if o == peer.domid => return true,
            // The parent's owner (oxenstored), or a privileged creator: no proof either way.
            Some(o) if o == self.me.domid || o == pore_core::DomId(0) => {
                perms.len() == 1 || perms[1..].iter().any(|p| p.domid == peer.domid)
            }
            _ => false,
        };
        if verdict {
            tracing::debug!(me = %self.me, %peer, "strawman: knock directory owned by us; its creator cannot be checked");
            return true;
        }
        tracing::warn!(me = %self.me, %peer, owner = ?owner.map(|d| d.0), "strawman: forged knock refused (its directory is not the peer's)");
        if let Err(e) = self.store.perform(&StoreOp::Rm { path: dir }) {
            tracing::debug!(me = %self.me, %peer, error = %e, "strawman: cannot remove a forged knock");
        }
        false
    }
}
