//! Random sequences of grant / map / bind / close / kill keep the hypervisor's accounting exact:
//! after every step `Hypervisor::outstanding` equals what a simple model of Xen predicts, every
//! refusal has the kind Xen's rules give, and once everything is dropped nothing is left.

use pore_backend_sim::{Hypervisor, Outstanding, SimChannel, SimDomain, SimGrant, SimMapping};
use pore_core::{Error, ErrorKind, EventChannel, Events, GrantedPages, Grants, MappedPages, Maps};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    CreateDomain,
    Kill(usize),
    Grant {
        owner: usize,
        to: usize,
        pages: usize,
    },
    EndAccess(usize),
    DropGrant(usize),
    Map {
        mapper: usize,
        grant: usize,
    },
    Unmap(usize),
    DropMapping(usize),
    Alloc {
        owner: usize,
        to: usize,
    },
    Bind {
        binder: usize,
        chan: usize,
    },
    Close(usize),
    DropChannel(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let i = 0usize..8;
    prop_oneof![
        1 => Just(Step::CreateDomain),
        1 => i.clone().prop_map(Step::Kill),
        3 => (i.clone(), i.clone(), 1usize..4).prop_map(|(owner, to, pages)| Step::Grant { owner, to, pages }),
        2 => i.clone().prop_map(Step::EndAccess),
        1 => i.clone().prop_map(Step::DropGrant),
        4 => (i.clone(), i.clone()).prop_map(|(mapper, grant)| Step::Map { mapper, grant }),
        2 => i.clone().prop_map(Step::Unmap),
        1 => i.clone().prop_map(Step::DropMapping),
        3 => (i.clone(), i.clone()).prop_map(|(owner, to)| Step::Alloc { owner, to }),
        3 => (i.clone(), i.clone()).prop_map(|(binder, chan)| Step::Bind { binder, chan }),
        2 => i.clone().prop_map(Step::Close),
        1 => i.prop_map(Step::DropChannel),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantState {
    Live,
    Deferred,
    Gone,
}

struct GrantRec {
    handle: Option<SimGrant>,
    owner: usize,
    grantee: usize,
    pages: usize,
    maps: usize,
    state: GrantState,
}

struct MapRec {
    handle: Option<SimMapping>,
    mapper: usize,
    grant: usize,
    alive: bool,
}

struct ChanRec {
    handle: Option<SimChannel>,
    owner: usize,
    remote: usize,
    bound: bool,
    alive: bool,
}

struct World {
    hv: Hypervisor,
    doms: Vec<Option<SimDomain>>,
    ids: Vec<pore_core::DomId>,
    grants: Vec<GrantRec>,
    maps: Vec<MapRec>,
    chans: Vec<ChanRec>,
}

impl World {
    fn alive(&self, d: usize) -> bool {
        self.doms[d].is_some()
    }
    fn dom(&self, d: usize) -> &SimDomain {
        self.doms[d].as_ref().unwrap()
    }

    /// The grant's owner no longer holds it (handle consumed or owner dead).
    fn release_grant(&mut self, g: usize) {
        let rec = &mut self.grants[g];
        if rec.state == GrantState::Live {
            rec.state = if rec.maps > 0 {
                GrantState::Deferred
            } else {
                GrantState::Gone
            };
        }
    }

    fn release_mapping(&mut self, m: usize) {
        if !self.maps[m].alive {
            return;
        }
        self.maps[m].alive = false;
        let g = &mut self.grants[self.maps[m].grant];
        g.maps -= 1;
        if g.state == GrantState::Deferred && g.maps == 0 {
            g.state = GrantState::Gone;
        }
    }

    fn expected(&self) -> Outstanding {
        let mut out = Outstanding {
            domains: self.doms.iter().filter(|d| d.is_some()).count(),
            ..Outstanding::default()
        };
        for g in &self.grants {
            match g.state {
                GrantState::Live => out.grants += g.pages,
                GrantState::Deferred => {
                    out.grants += g.pages;
                    out.revoke_later += g.pages;
                }
                GrantState::Gone => {}
            }
        }
        for m in &self.maps {
            if m.alive {
                out.mappings += self.grants[m.grant].pages;
            }
        }
        out.ports = self.chans.iter().filter(|c| c.alive).count();
        out
    }

    fn kill(&mut self, d: usize) {
        let Some(dom) = self.doms[d].take() else {
            return;
        };
        drop(dom);
        for m in 0..self.maps.len() {
            if self.maps[m].mapper == d {
                self.release_mapping(m);
            }
        }
        for g in 0..self.grants.len() {
            if self.grants[g].owner == d {
                self.release_grant(g);
            }
        }
        for c in &mut self.chans {
            if c.owner == d {
                c.alive = false;
            }
        }
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let nd = self.doms.len();
        match *step {
            Step::CreateDomain if nd < 6 => {
                let d = self.hv.create_domain("d").unwrap();
                self.ids.push(d.id());
                self.doms.push(Some(d));
            }
            Step::Kill(d) => self.kill(d % nd),
            Step::Grant { owner, to, pages } => {
                let (owner, to) = (owner % nd, to % nd);
                if self.alive(owner) {
                    let to_id = self.doms[to]
                        .as_ref()
                        .map_or(pore_core::DomId(1000), |d| d.id());
                    let h = self.dom(owner).grant(to_id, pages).unwrap();
                    self.grants.push(GrantRec {
                        handle: Some(h),
                        owner,
                        grantee: to,
                        pages,
                        maps: 0,
                        state: GrantState::Live,
                    });
                }
            }
            Step::EndAccess(g) | Step::DropGrant(g) if !self.grants.is_empty() => {
                let g = g % self.grants.len();
                if let Some(h) = self.grants[g].handle.take() {
                    let rec = &self.grants[g];
                    let expect = if !self.alive(rec.owner) {
                        Some(ErrorKind::Closed)
                    } else if rec.maps > 0 {
                        Some(ErrorKind::Busy)
                    } else {
                        None
                    };
                    if matches!(step, Step::EndAccess(_)) {
                        let r = h.end_access();
                        prop_assert_eq!(r.err().map(|e| e.kind()), expect);
                    } else {
                        drop(h);
                    }
                    self.release_grant(g);
                }
            }
            Step::Map { mapper, grant } if !self.grants.is_empty() => {
                let (mapper, g) = (mapper % nd, grant % self.grants.len());
                if self.alive(mapper) {
                    let rec = &self.grants[g];
                    let owner_id = self.grants_owner_id(g);
                    let refs = rec
                        .handle
                        .as_ref()
                        .map(|h| h.refs().to_vec())
                        .unwrap_or_else(|| vec![pore_core::GrantRef(99_999)]);
                    let r = self.dom(mapper).map(owner_id, &refs);
                    let expect = if rec.state != GrantState::Live || rec.handle.is_none() {
                        Some(ErrorKind::NotFound)
                    } else if rec.grantee != mapper {
                        Some(ErrorKind::PermissionDenied)
                    } else {
                        None
                    };
                    prop_assert_eq!(r.as_ref().err().map(|e| e.kind()), expect);
                    if let Ok(h) = r {
                        self.grants[g].maps += 1;
                        self.maps.push(MapRec {
                            handle: Some(h),
                            mapper,
                            grant: g,
                            alive: true,
                        });
                    }
                }
            }
            Step::Unmap(m) | Step::DropMapping(m) if !self.maps.is_empty() => {
                let m = m % self.maps.len();
                if let Some(h) = self.maps[m].handle.take() {
                    let expect = (!self.alive(self.maps[m].mapper)).then_some(ErrorKind::Closed);
                    if matches!(step, Step::Unmap(_)) {
                        prop_assert_eq!(h.unmap().err().map(|e| e.kind()), expect);
                    } else {
                        drop(h);
                    }
                    self.release_mapping(m);
                }
            }
            Step::Alloc { owner, to } => {
                let (owner, to) = (owner % nd, to % nd);
                if self.alive(owner) {
                    let to_id = self.doms[to]
                        .as_ref()
                        .map_or(pore_core::DomId(1000), |d| d.id());
                    let h = self.dom(owner).alloc_unbound(to_id).unwrap();
                    self.chans.push(ChanRec {
                        handle: Some(h),
                        owner,
                        remote: to,
                        bound: false,
                        alive: true,
                    });
                }
            }
            Step::Bind { binder, chan } if !self.chans.is_empty() => {
                let (binder, c) = (binder % nd, chan % self.chans.len());
                if self.alive(binder) {
                    let Some(port) = self.chans[c].handle.as_ref().map(|h| h.port()) else {
                        return Ok(());
                    };
                    let owner_id = self.chan_owner_id(c);
                    let rec = &self.chans[c];
                    let r = self.dom(binder).bind_interdomain(owner_id, port);
                    let expect = if !rec.alive {
                        Some(ErrorKind::NotFound)
                    } else if rec.remote != binder || rec.bound {
                        Some(ErrorKind::PermissionDenied)
                    } else {
                        None
                    };
                    prop_assert_eq!(r.as_ref().err().map(|e| e.kind()), expect);
                    if let Ok(h) = r {
                        self.chans[c].bound = true;
                        self.chans.push(ChanRec {
                            handle: Some(h),
                            owner: binder,
                            remote: self.chans[c].owner,
                            bound: true,
                            alive: true,
                        });
                    }
                }
            }
            Step::Close(c) | Step::DropChannel(c) if !self.chans.is_empty() => {
                let c = c % self.chans.len();
                if let Some(h) = self.chans[c].handle.take() {
                    let expect = (!self.chans[c].alive).then_some(ErrorKind::Closed);
                    if matches!(step, Step::Close(_)) {
                        prop_assert_eq!(h.close().err().map(|e| e.kind()), expect);
                    } else {
                        drop(h);
                    }
                    self.chans[c].alive = false;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Records name domains by index; `ids` remembers their domids after they die.
    fn grants_owner_id(&self, g: usize) -> pore_core::DomId {
        self.ids[self.grants[g].owner]
    }
    fn chan_owner_id(&self, c: usize) -> pore_core::DomId {
        self.ids[self.chans[c].owner]
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn accounting_stays_exact(steps in proptest::collection::vec(step(), 1..60)) {
        let hv = Hypervisor::new().unwrap();
        let doms: Vec<Option<SimDomain>> =
            (0..3).map(|_| Some(hv.create_domain("d").unwrap())).collect();
        let ids = doms.iter().map(|d| d.as_ref().unwrap().id()).collect();
        let mut w = World { hv, doms, ids, grants: Vec::new(), maps: Vec::new(), chans: Vec::new() };
        for s in &steps {
            w.apply(s)?;
            prop_assert_eq!(w.hv.outstanding(), w.expected(), "after {:?}", s);
        }
        // Drop every handle and kill every domain: nothing may be left.
        for m in &mut w.maps { m.handle.take(); }
        for g in &mut w.grants { g.handle.take(); }
        for c in &mut w.chans { c.handle.take(); }
        for d in &mut w.doms { d.take(); }
        prop_assert_eq!(w.hv.outstanding(), Outstanding::default());
    }
}
