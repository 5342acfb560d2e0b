//! Random open / close / drop sequences on the loopback backend keep its accounting exact.
#![cfg(feature = "test-utils")]

use pore_core::loopback::{Loopback, LoopbackDomain, Outstanding};
use pore_core::{DomId, Error, ErrorKind, Pore};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    OpenActive { pages: usize },
    OpenPassive { which: usize },
    CloseActive { which: usize },
    ClosePassive { which: usize },
    DropActive { which: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..4).prop_map(|pages| Op::OpenActive { pages }),
        any::<usize>().prop_map(|which| Op::OpenPassive { which }),
        any::<usize>().prop_map(|which| Op::CloseActive { which }),
        any::<usize>().prop_map(|which| Op::ClosePassive { which }),
        any::<usize>().prop_map(|which| Op::DropActive { which }),
    ]
}

struct Model {
    active: Vec<(Pore<LoopbackDomain>, usize, usize)>, // pore, pages, passive mappings
    passive: Vec<(Pore<LoopbackDomain>, usize)>,       // pore, index of its active pore's id
    ids: Vec<usize>,                                   // id of each active entry
    next_id: usize,
    deferred_pages: Vec<(usize, usize)>, // (active id, pages) awaiting last unmap
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn accounting_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        let xen = Loopback::new();
        let (a, b) = (xen.domain(DomId(1)), xen.domain(DomId(2)));
        let mut m = Model { active: vec![], passive: vec![], ids: vec![], next_id: 0, deferred_pages: vec![] };
        for op in ops {
            match op {
                Op::OpenActive { pages } => {
                    m.active.push((Pore::open_active(&a, DomId(2), pages).unwrap(), pages, 0));
                    m.ids.push(m.next_id);
                    m.next_id += 1;
                }
                Op::OpenPassive { which } if !m.active.is_empty() => {
                    let i = which % m.active.len();
                    let info = m.active[i].0.info();
                    // A port can be bound once; further passive opens of the same pore fail.
                    match Pore::open_passive(&b, DomId(1), &info.refs, info.port) {
                        Ok(p) => { m.active[i].2 += 1; m.passive.push((p, m.ids[i])); }
                        Err(e) => prop_assert_eq!(e.kind(), ErrorKind::PermissionDenied),
                    }
                }
                Op::CloseActive { which } | Op::DropActive { which } if !m.active.is_empty() => {
                    let i = which % m.active.len();
                    let (pore, pages, _) = m.active.remove(i);
                    let id = m.ids.remove(i);
                    let still_mapped = m.passive.iter().any(|(_, owner)| *owner == id);
                    if still_mapped { m.deferred_pages.push((id, pages)); }
                    if matches!(op, Op::CloseActive { .. }) {
                        let r = pore.close();
                        prop_assert_eq!(r.is_err(), still_mapped);
                        if let Err(e) = r { prop_assert_eq!(e.kind(), ErrorKind::Busy); }
                    } else {
                        drop(pore);
                    }
                }
                Op::ClosePassive { which } if !m.passive.is_empty() => {
                    let (pore, owner) = m.passive.remove(which % m.passive.len());
                    pore.close().unwrap();
                    if !m.passive.iter().any(|(_, o)| *o == owner) {
                        m.deferred_pages.retain(|(id, _)| *id != owner);
                    }
                }
                _ => {}
            }
            let live_pages: usize = m.active.iter().map(|(_, p, _)| p).sum();
            let deferred: usize = m.deferred_pages.iter().map(|(_, p)| p).sum();
            let mappings: usize = m.passive.iter().map(|(p, _)| p.pages()).sum();
            let got = xen.outstanding();
            prop_assert_eq!(got.grants, live_pages + deferred);
            prop_assert_eq!(got.revoke_later, deferred);
            prop_assert_eq!(got.mappings, mappings);
            // Each open pore holds exactly one port.
            prop_assert_eq!(got.ports, m.active.len() + m.passive.len());
        }
        drop(m);
        prop_assert_eq!(xen.outstanding(), Outstanding::default());
    }
}
