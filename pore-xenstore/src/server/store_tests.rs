//! Unit tests of the sans-IO core: guests (unprivileged), ownership, quotas, watches,
//! transactions, release.

use pore_core::DomId;

use crate::codec::{Message, Request};
use crate::perms::{Access, Perm};

use super::store::{AcceptDomains, OutKind, Outgoing, Store};
use super::{Config, ConnId, Quotas};

struct T {
    s: Store,
    dom0: ConnId,
}

fn msg(req: &Request<'_>, tx: u32) -> Message {
    let b = req.encode(7, tx, 4096).unwrap();
    Message {
        ty: req.msg_type().as_u32(),
        req_id: 7,
        tx_id: tx,
        payload: b[16..].to_vec(),
    }
}

impl T {
    fn new(config: Config) -> Self {
        let mut s = Store::new(config);
        let dom0 = s.connect(DomId::DOM0);
        T { s, dom0 }
    }

    fn raw(&mut self, c: ConnId, m: &Message) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.s.handle(c, m, &mut AcceptDomains, &mut out);
        out
    }

    /// The reply payload, or the error name prefixed with '!'.
    fn req(&mut self, c: ConnId, r: Request<'_>, tx: u32) -> String {
        let out = self.raw(c, &msg(&r, tx));
        let reply = out
            .iter()
            .find(|o| o.conn == c && o.kind == OutKind::Reply)
            .expect("a reply");
        let ty = u32::from_le_bytes(reply.bytes[0..4].try_into().unwrap());
        let p = String::from_utf8_lossy(&reply.bytes[16..]).into_owned();
        if ty == 16 {
            format!("!{}", p.trim_end_matches('\0'))
        } else {
            p
        }
    }

    fn guest(&mut self, domid: u32) -> ConnId {
        let home = format!("/local/domain/{domid}");
        let d0 = self.dom0;
        assert_eq!(self.req(d0, Request::Mkdir(&home), 0), "OK\0");
        let perms = vec![Perm::new(Access::None, domid)];
        let r = self.req(
            d0,
            Request::SetPerms {
                path: &home,
                perms: perms.into(),
            },
            0,
        );
        assert_eq!(r, "OK\0");
        let r = self.req(
            d0,
            Request::Introduce {
                domid,
                gfn: 1,
                port: 7,
            },
            0,
        );
        assert_eq!(r, "OK\0");
        let domid = DomId(u16::try_from(domid).unwrap());
        self.s.domain_conn(domid).unwrap()
    }

    fn events(out: &[Outgoing], c: ConnId) -> Vec<String> {
        out.iter()
            .filter(|o| o.conn == c && o.kind == OutKind::Event)
            .map(|o| String::from_utf8_lossy(&o.bytes[16..]).replace('\0', " "))
            .collect()
    }
}

#[test]
fn guest_owns_what_it_creates_and_cannot_change_owner() {
    let mut t = T::new(Config::default());
    let g = t.guest(5);
    let d0 = t.dom0;
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "data/x",
                value: b"v"
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(t.req(g, Request::GetPerms("data/x"), 0), "n5\0");
    assert_eq!(t.req(g, Request::Read("/tool"), 0), "!EACCES");
    assert_eq!(t.req(g, Request::Read("/nope/x"), 0), "!EACCES");
    assert_eq!(t.req(g, Request::Read("data/nope"), 0), "!ENOENT");
    let perms = vec![Perm::new(Access::None, 0)];
    assert_eq!(
        t.req(
            g,
            Request::SetPerms {
                path: "data/x",
                perms: perms.into()
            },
            0
        ),
        "!EPERM"
    );
    // A dom0 directory writable by 5: what 5 creates there is owned by 5.
    t.req(d0, Request::Mkdir("/shared"), 0);
    let perms = vec![Perm::new(Access::None, 0), Perm::new(Access::Write, 5)];
    t.req(
        d0,
        Request::SetPerms {
            path: "/shared",
            perms: perms.into(),
        },
        0,
    );
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "/shared/a/b",
                value: b"1"
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(t.req(d0, Request::GetPerms("/shared/a/b"), 0), "n5\0w5\0");
    assert_eq!(t.req(d0, Request::GetPerms("/shared/a"), 0), "n5\0w5\0");
    assert_eq!(t.req(g, Request::Read("/shared"), 0), "!EACCES");
    assert_eq!(
        t.req(
            g,
            Request::Introduce {
                domid: 6,
                gfn: 1,
                port: 1
            },
            0
        ),
        "!EACCES"
    );
    assert_eq!(t.req(g, Request::GetDomainPath(5), 0), "/local/domain/5\0");
}

#[test]
fn quotas_use_c_names() {
    let q = Quotas {
        nodes_per_domain: 3,
        watches_per_domain: 1,
        transactions: 1,
        entry_size: 100,
        ..Quotas::default()
    };
    let mut t = T::new(Config {
        quotas: q,
        ..Config::default()
    });
    let g = t.guest(5);
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "a",
                value: b""
            },
            0
        ),
        "OK\0"
    );
    // Two nodes would be needed (b and b/c), only one is left.
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "b/c",
                value: b""
            },
            0
        ),
        "!ENOSPC"
    );
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "b",
                value: b""
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "c",
                value: b""
            },
            0
        ),
        "!ENOSPC"
    );
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "a",
                value: &[0; 80]
            },
            0
        ),
        "!ENOSPC"
    );
    assert_eq!(
        t.req(
            g,
            Request::Watch {
                path: "a",
                token: "1"
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(
        t.req(
            g,
            Request::Watch {
                path: "a",
                token: "2"
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(
        t.req(
            g,
            Request::Watch {
                path: "a",
                token: "3"
            },
            0
        ),
        "!E2BIG"
    );
    assert_eq!(t.req(g, Request::TransactionStart, 0), "1\0");
    assert_eq!(t.req(g, Request::TransactionStart, 0), "2\0");
    assert_eq!(t.req(g, Request::TransactionStart, 0), "!ENOSPC");
    // dom0 is not limited.
    let d0 = t.dom0;
    for i in 0..5 {
        assert_eq!(
            t.req(
                d0,
                Request::Write {
                    path: &format!("/local/domain/5/z{i}"),
                    value: b""
                },
                0
            ),
            "OK\0"
        );
    }
}

#[test]
fn watch_events_filtered_and_relative_for_guests() {
    let mut t = T::new(Config::default());
    let g = t.guest(5);
    let d0 = t.dom0;
    t.req(
        d0,
        Request::Write {
            path: "/secret",
            value: b"1",
        },
        0,
    );
    let out = t.raw(
        g,
        &msg(
            &Request::Watch {
                path: "/secret",
                token: "s",
            },
            0,
        ),
    );
    assert_eq!(
        T::events(&out, g),
        ["/secret s "],
        "registration event even when unreadable"
    );
    let out = t.raw(
        d0,
        &msg(
            &Request::Write {
                path: "/secret",
                value: b"2",
            },
            0,
        ),
    );
    assert!(
        T::events(&out, g).is_empty(),
        "change hidden from a guest that cannot read"
    );
    t.req(
        g,
        Request::Watch {
            path: "data",
            token: "d",
        },
        0,
    );
    let out = t.raw(
        d0,
        &msg(
            &Request::Write {
                path: "/local/domain/5/data/k",
                value: b"2",
            },
            0,
        ),
    );
    assert_eq!(T::events(&out, g), ["data/k d "]);
    // Events before the writer's reply (C's order).
    t.req(
        d0,
        Request::Watch {
            path: "/w",
            token: "w",
        },
        0,
    );
    let out = t.raw(
        d0,
        &msg(
            &Request::Write {
                path: "/w",
                value: b"",
            },
            0,
        ),
    );
    assert_eq!(out[0].kind, OutKind::Event);
    assert_eq!(out[1].kind, OutKind::Reply);
}

#[test]
fn transactions_isolate_and_conflict() {
    let mut t = T::new(Config::default());
    let d0 = t.dom0;
    let b = t.s.connect(DomId::DOM0);
    t.req(
        d0,
        Request::Watch {
            path: "/t",
            token: "t",
        },
        0,
    );
    assert_eq!(t.req(d0, Request::TransactionStart, 0), "1\0");
    assert_eq!(
        t.req(
            d0,
            Request::Write {
                path: "/t/x",
                value: b"1"
            },
            1
        ),
        "OK\0"
    );
    assert_eq!(t.req(b, Request::Read("/t/x"), 0), "!ENOENT");
    assert_eq!(t.req(d0, Request::Read("/t/x"), 1), "1");
    assert_eq!(
        t.req(b, Request::Read("/t/x"), 1),
        "!ENOENT",
        "tx ids are per connection"
    );
    let out = t.raw(d0, &msg(&Request::TransactionEnd { commit: true }, 1));
    assert_eq!(T::events(&out, d0), ["/t/x t "]);
    assert_eq!(t.req(b, Request::Read("/t/x"), 0), "1");
    assert_eq!(t.req(d0, Request::TransactionStart, 0), "2\0");
    assert_eq!(t.req(d0, Request::Read("/t/x"), 2), "1");
    assert_eq!(
        t.req(
            b,
            Request::Write {
                path: "/t/x",
                value: b"2"
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(
        t.req(
            d0,
            Request::Write {
                path: "/t/y",
                value: b"1"
            },
            2
        ),
        "OK\0"
    );
    assert_eq!(
        t.req(d0, Request::TransactionEnd { commit: true }, 2),
        "!EAGAIN"
    );
    assert_eq!(t.req(b, Request::Read("/t/y"), 0), "!ENOENT");
    assert_eq!(
        t.req(d0, Request::TransactionEnd { commit: true }, 2),
        "!ENOENT"
    );
}

#[test]
fn release_removes_owned_nodes_and_fires() {
    let mut t = T::new(Config::default());
    let g = t.guest(5);
    let d0 = t.dom0;
    t.req(
        g,
        Request::Write {
            path: "data/x",
            value: b"v",
        },
        0,
    );
    t.req(
        d0,
        Request::Watch {
            path: "@releaseDomain",
            token: "r",
        },
        0,
    );
    t.req(
        d0,
        Request::Watch {
            path: "/local/domain/5/data/x",
            token: "x",
        },
        0,
    );
    let out = t.raw(d0, &msg(&Request::Release(5), 0));
    let ev = T::events(&out, d0);
    assert!(ev.contains(&"@releaseDomain r ".to_string()), "{ev:?}");
    assert!(
        ev.contains(&"/local/domain/5/data/x x ".to_string()),
        "{ev:?}"
    );
    assert_eq!(t.req(d0, Request::Read("/local/domain/5"), 0), "!ENOENT");
    assert_eq!(t.req(d0, Request::IsDomainIntroduced(5), 0), "F\0");
    assert_eq!(t.req(d0, Request::Release(5), 0), "!ENOENT");
    assert!(t.s.domid_of(g).is_none());
}

#[test]
fn malformed_requests_get_errors_not_panics() {
    let mut t = T::new(Config::default());
    let d0 = t.dom0;
    let cases: &[(u32, &[u8])] = &[
        (2, b"/a"),
        (2, b""),
        (11, b""),
        (14, b"/a\0"),
        (14, b"/a\0q1\0"),
        (4, b"/a\0"),
        (7, b"X\0"),
        (8, b"1\0"),
        (22, b"/\0"),
        (99, b"x\0"),
        (15, b"/x\0t\0"),
        (2, b"\xff\xfe\0"),
    ];
    for (ty, p) in cases {
        let m = Message {
            ty: *ty,
            req_id: 1,
            tx_id: 0,
            payload: p.to_vec(),
        };
        let out = t.raw(d0, &m);
        assert_eq!(out.len(), 1);
        assert_eq!(
            u32::from_le_bytes(out[0].bytes[0..4].try_into().unwrap()),
            16,
            "{ty} {p:?}"
        );
    }
}

#[test]
fn big_directory_is_e2big_and_directory_part_pages() {
    let mut t = T::new(Config::default());
    let d0 = t.dom0;
    for i in 0..300 {
        t.req(d0, Request::Mkdir(&format!("/big/child-number-{i:05}")), 0);
    }
    assert_eq!(t.req(d0, Request::Directory("/big"), 0), "!E2BIG");
    let mut off = 0;
    let mut names = 0;
    loop {
        let r = t.req(
            d0,
            Request::DirectoryPart {
                path: "/big",
                offset: off,
            },
            0,
        );
        assert!(r.len() <= 4096);
        let body = &r[r.find('\0').unwrap() + 1..];
        let done = body.ends_with("\0\0") || body == "\0";
        let chunk = body.strip_suffix('\0').filter(|_| done).unwrap_or(body);
        names += chunk.matches('\0').count();
        off += chunk.len() as u32;
        if done {
            break;
        }
    }
    assert_eq!(names, 300);
}

#[test]
fn set_target_gives_the_targets_rights() {
    let mut t = T::new(Config::default());
    let g = t.guest(5);
    let d0 = t.dom0;
    t.req(
        g,
        Request::Watch {
            path: "/nope/x",
            token: "t1",
        },
        0,
    );
    assert_eq!(t.req(g, Request::Read("/tool"), 0), "!EACCES");
    assert_eq!(
        t.req(
            d0,
            Request::SetTarget {
                domid: 5,
                target: 0
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(t.req(g, Request::Read("/tool"), 0), "");
    let out = t.raw(
        d0,
        &msg(
            &Request::Write {
                path: "/nope/x",
                value: b"",
            },
            0,
        ),
    );
    assert_eq!(T::events(&out, g), ["/nope/x t1 "]);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    const PATHS: &[&str] = &[
        "/a",
        "/a/b",
        "/a/c",
        "data/x",
        "data",
        "/",
        "@releaseDomain",
        "x y",
    ];

    fn z(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p);
            v.push(0);
        }
        v
    }

    /// A request: mostly well-formed operations on a few paths, sometimes random bytes.
    fn request() -> impl Strategy<Value = (u32, Vec<u8>)> {
        let path = proptest::sample::select(PATHS).prop_map(|p| p.as_bytes().to_vec());
        prop_oneof![
            3 => (path.clone(), proptest::collection::vec(any::<u8>(), 0..4)).prop_map(|(p, v)| {
                let mut m = z(&[&p]);
                m.extend_from_slice(&v);
                (11, m)
            }),
            1 => path.clone().prop_map(|p| (12, z(&[&p]))),
            2 => path.clone().prop_map(|p| (13, z(&[&p]))),
            1 => (path.clone(), proptest::sample::select(vec!["n5", "b0", "r5", "w0"]))
                .prop_map(|(p, perm)| (14, z(&[&p, perm.as_bytes()]))),
            1 => (path.clone(), proptest::sample::select(vec![1u32, 2, 3, 22]))
                .prop_map(|(p, t)| (t, if t == 22 { z(&[&p, b"0"]) } else { z(&[&p]) })),
            2 => Just((6, b"\0".to_vec())),
            2 => proptest::sample::select(vec!["T", "F"]).prop_map(|c| (7, z(&[c.as_bytes()]))),
            1 => path.prop_map(|p| (4, z(&[&p, b"tok"]))),
            1 => (0u32..27, proptest::collection::vec(any::<u8>(), 0..24)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Any message sequence from dom0 and a guest: never a panic, one reply per
        /// request, and the tree stays consistent (transactions committed included).
        #[test]
        fn random_messages_keep_the_tree_consistent(
            msgs in proptest::collection::vec((any::<bool>(), request(), 0u32..3), 1..60)
        ) {
            let mut t = T::new(Config::default());
            let g = t.guest(5);
            let d0 = t.dom0;
            for (guest, (ty, payload), tx) in msgs {
                let who = if guest { g } else { d0 };
                if t.s.domid_of(who).is_none() {
                    continue;
                }
                let m = Message { ty, req_id: 9, tx_id: tx, payload };
                let out = t.raw(who, &m);
                let replies = out.iter().filter(|o| o.conn == who && o.kind == OutKind::Reply).count();
                prop_assert_eq!(replies, 1);
                prop_assert!(t.s.check_tree().is_ok(), "{:?}", t.s.check_tree());
            }
        }
    }
}

/// Observed on C xenstored 4.17: a committed transaction fires one event per changed
/// node, in the order the transaction first accessed them, and none for a node it
/// created and removed.
#[test]
fn commit_events_like_c() {
    let mut t = T::new(Config::default());
    let d0 = t.dom0;
    let b = t.s.connect(DomId::DOM0);
    t.req(
        d0,
        Request::Write {
            path: "/c/b",
            value: b"0",
        },
        0,
    );
    t.req(
        b,
        Request::Watch {
            path: "/c",
            token: "w",
        },
        0,
    );
    assert_eq!(t.req(d0, Request::TransactionStart, 0), "1\0");
    t.req(d0, Request::Read("/c/b"), 1);
    t.req(
        d0,
        Request::Write {
            path: "/c/a",
            value: b"1",
        },
        1,
    );
    t.req(
        d0,
        Request::Write {
            path: "/c/b",
            value: b"1",
        },
        1,
    );
    t.req(
        d0,
        Request::Write {
            path: "/c/a",
            value: b"2",
        },
        1,
    );
    t.req(d0, Request::Rm("/c/a"), 1);
    t.req(
        d0,
        Request::Write {
            path: "/c/n/m",
            value: b"2",
        },
        1,
    );
    let out = t.raw(d0, &msg(&Request::TransactionEnd { commit: true }, 1));
    assert_eq!(T::events(&out, b), ["/c/b w ", "/c/n/m w "]);
}

/// C checks only the length of a special watch path.
#[test]
fn special_watch_paths_only_length_checked() {
    let mut t = T::new(Config::default());
    let d0 = t.dom0;
    assert_eq!(
        t.req(
            d0,
            Request::Watch {
                path: "@any thing.x",
                token: "t"
            },
            0
        ),
        "OK\0"
    );
    let long = format!("@{}", "x".repeat(2048));
    assert_eq!(
        t.req(
            d0,
            Request::Watch {
                path: &long,
                token: "t"
            },
            0
        ),
        "!EINVAL"
    );
    assert_eq!(
        t.req(
            d0,
            Request::Watch {
                path: "/a b",
                token: "t"
            },
            0
        ),
        "!EINVAL"
    );
}

/// A guest transaction may access `transaction_nodes` distinct nodes (found missing
/// ones included); one more is `ENOSPC` and the transaction cannot commit (`ENOMEM`),
/// as C's `access_node`. Nodes already accessed stay usable; dom0 is not limited.
#[test]
fn transaction_node_quota() {
    let mut t = T::new(Config {
        quotas: Quotas {
            transaction_nodes: 8,
            ..Quotas::default()
        },
        ..Config::default()
    });
    let g = t.guest(5);
    assert_eq!(t.req(g, Request::TransactionStart, 0), "1\0");
    // Each missing `x<i>` is one node (its parent, the home, is the first).
    let mut refused_at = None;
    for i in 0..100 {
        let p = format!("x{i}");
        match t.req(g, Request::Read(&p), 1).as_str() {
            "!ENOENT" => {}
            "!ENOSPC" => {
                refused_at = Some(i);
                break;
            }
            r => panic!("unexpected {r}"),
        }
    }
    assert_eq!(refused_at, Some(7), "home + 7 missing nodes, then ENOSPC");
    assert_eq!(t.s.tx_stats(g, 1).unwrap().0, 8);
    // Already accessed: still answered.
    assert_eq!(t.req(g, Request::Read("x3"), 1), "!ENOENT");
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "x3",
                value: b"v"
            },
            1
        ),
        "OK\0"
    );
    assert_eq!(t.req(g, Request::Read("x3"), 1), "v");
    assert_eq!(t.req(g, Request::Read("x99"), 1), "!ENOSPC");
    assert_eq!(t.s.tx_stats(g, 1).unwrap().0, 8);
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: true }, 1),
        "!ENOMEM"
    );
    assert_eq!(t.req(g, Request::Read("x3"), 0), "!ENOENT");
    // A new transaction starts afresh and commits.
    assert_eq!(t.req(g, Request::TransactionStart, 0), "2\0");
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "y",
                value: b"1"
            },
            2
        ),
        "OK\0"
    );
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: true }, 2),
        "OK\0"
    );
    // dom0 is exempt.
    let d0 = t.dom0;
    assert_eq!(t.req(d0, Request::TransactionStart, 0), "1\0");
    for i in 0..50 {
        let p = format!("/q/{i}");
        assert_eq!(t.req(d0, Request::Read(&p), 1), "!ENOENT");
    }
    assert_eq!(
        t.req(d0, Request::TransactionEnd { commit: true }, 1),
        "OK\0"
    );
}

/// The default cap bounds what a guest can make a transaction keep: reads of missing
/// paths stop at 1024 nodes (they grew without bound before).
#[test]
fn transaction_nodes_bounded_by_default() {
    let mut t = T::new(Config::default());
    let g = t.guest(5);
    assert_eq!(t.req(g, Request::TransactionStart, 0), "1\0");
    let long = "a".repeat(200);
    let mut enospc = 0;
    for i in 0..3000 {
        let p = format!("{long}{i}");
        if t.req(g, Request::Read(&p), 1) == "!ENOSPC" {
            enospc += 1;
        }
    }
    let (nodes, _, mem) = t.s.tx_stats(g, 1).unwrap();
    assert_eq!(nodes, 1024);
    assert_eq!(enospc, 3000 - 1023);
    assert!(mem <= Quotas::default().memory_per_domain, "{mem}");
}

/// Writing one node again and again keeps one pending watch event for it (they
/// accumulated one per write before).
#[test]
fn transaction_keeps_one_change_per_node() {
    let mut t = T::new(Config::default());
    let g = t.guest(5);
    let d0 = t.dom0;
    assert_eq!(
        t.req(
            d0,
            Request::Watch {
                path: "/local/domain/5/w",
                token: "t"
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(t.req(g, Request::TransactionStart, 0), "1\0");
    for i in 0..500 {
        let v = i.to_string();
        let r = t.req(
            g,
            Request::Write {
                path: "w",
                value: v.as_bytes(),
            },
            1,
        );
        assert_eq!(r, "OK\0");
    }
    let (nodes, events, _) = t.s.tx_stats(g, 1).unwrap();
    assert_eq!((nodes, events), (2, 1));
    let out = t.raw(g, &msg(&Request::TransactionEnd { commit: true }, 1));
    assert_eq!(T::events(&out, d0), ["/local/domain/5/w t "]);
    assert_eq!(t.req(g, Request::Read("w"), 0), "499");
}

/// Transactions of one guest connection hold at most `memory_per_domain` bytes in all:
/// over it the request is `ENOMEM` and that transaction cannot commit; dom0 is exempt.
#[test]
fn transaction_memory_quota() {
    let limit = 64 * 1024;
    let mut t = T::new(Config {
        quotas: Quotas {
            memory_per_domain: limit,
            ..Quotas::default()
        },
        ..Config::default()
    });
    let g = t.guest(5);
    let long = "m".repeat(1500);
    assert_eq!(t.req(g, Request::TransactionStart, 0), "1\0");
    assert_eq!(t.req(g, Request::TransactionStart, 0), "2\0");
    let mut first = None;
    for i in 0..200 {
        let p = format!("{long}{i}");
        match t.req(g, Request::Read(&p), 1).as_str() {
            "!ENOENT" => {}
            "!ENOMEM" => {
                first = Some(i);
                break;
            }
            r => panic!("unexpected {r}"),
        }
    }
    let first = first.expect("ENOMEM before 200 reads");
    assert!(first > 5, "refused too early: {first}");
    let m1 = t.s.tx_stats(g, 1).unwrap().2;
    assert!(m1 <= limit, "{m1}");
    // The other transaction gets what is left: very little.
    let mut refused = false;
    for i in 0..200 {
        let p = format!("{long}{i}");
        if t.req(g, Request::Read(&p), 2) == "!ENOMEM" {
            refused = true;
            break;
        }
    }
    assert!(refused);
    let m2 = t.s.tx_stats(g, 2).unwrap().2;
    assert!(m1 + m2 <= limit, "{m1} + {m2}");
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: true }, 1),
        "!ENOMEM"
    );
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: false }, 2),
        "OK\0"
    );
    // Freed: a new transaction works.
    assert_eq!(t.req(g, Request::TransactionStart, 0), "3\0");
    assert_eq!(
        t.req(
            g,
            Request::Write {
                path: "z",
                value: b"1"
            },
            3
        ),
        "OK\0"
    );
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: true }, 3),
        "OK\0"
    );
    let d0 = t.dom0;
    assert_eq!(t.req(d0, Request::TransactionStart, 0), "1\0");
    for i in 0..200 {
        let p = format!("/{long}{i}");
        assert_eq!(t.req(d0, Request::Read(&p), 1), "!ENOENT");
    }
    assert_eq!(
        t.req(d0, Request::TransactionEnd { commit: true }, 1),
        "OK\0"
    );
}

impl T {
    fn write(&mut self, c: ConnId, path: &str, value: &[u8], tx: u32) -> String {
        self.req(c, Request::Write { path, value }, tx)
    }

    fn set_perms(&mut self, c: ConnId, path: &str, perms: &[Perm]) -> String {
        self.req(
            c,
            Request::SetPerms {
                path,
                perms: perms.to_vec().into(),
            },
            0,
        )
    }
}

/// Issue 10 item 2 (the XSA-322 class): ACL entries naming a domain that was released
/// give nothing to a later domain with the same id, as in C xenstored 4.17 (where such
/// entries are ignored, yet still listed by GET_PERMS); the node's children inherit the
/// ignored entry; a transaction that copied the node before the release does not bring
/// the entry back at commit; perms set again name the new domain.
#[test]
fn acl_entries_of_a_released_domain_give_nothing_to_its_successor() {
    let mut t = T::new(Config::default());
    let d0 = t.dom0;
    let r7 = [Perm::new(Access::None, 0), Perm::new(Access::Read, 7)];
    for p in ["/secret", "/shared", "/in-tx"] {
        assert_eq!(t.write(d0, p, b"s", 0), "OK\0");
        assert_eq!(t.set_perms(d0, p, &r7), "OK\0");
    }
    let old = t.guest(7);
    assert_eq!(t.req(old, Request::Read("/secret"), 0), "s");
    // dom0 copies /in-tx into a transaction while the old domain 7 lives.
    assert_eq!(t.req(d0, Request::TransactionStart, 0), "1\0");
    assert_eq!(t.write(d0, "/in-tx", b"t", 1), "OK\0");
    assert_eq!(t.req(d0, Request::Release(7), 0), "OK\0");
    let new = t.guest(7);
    assert_eq!(
        t.req(d0, Request::TransactionEnd { commit: true }, 1),
        "OK\0"
    );
    assert_eq!(t.req(new, Request::Read("/secret"), 0), "!EACCES");
    assert_eq!(t.req(new, Request::Read("/in-tx"), 0), "!EACCES");
    // Still listed, like C.
    assert_eq!(t.req(d0, Request::GetPerms("/secret"), 0), "n0\0r7\0");
    // Rewriting the node does not revive the entry.
    assert_eq!(t.write(d0, "/secret", b"u", 0), "OK\0");
    assert_eq!(t.req(new, Request::Read("/secret"), 0), "!EACCES");
    // A child inherits the entry, ignored too.
    assert_eq!(t.write(d0, "/shared/kid", b"k", 0), "OK\0");
    assert_eq!(t.req(d0, Request::GetPerms("/shared/kid"), 0), "n0\0r7\0");
    assert_eq!(t.req(new, Request::Read("/shared/kid"), 0), "!EACCES");
    // Perms set after the new domain came name the new domain.
    assert_eq!(t.set_perms(d0, "/shared", &r7), "OK\0");
    assert_eq!(t.req(new, Request::Read("/shared"), 0), "s");
    t.s.check_tree().unwrap();
}

/// Issue 10 item 2, the target relation: a stub domain whose target is released has no
/// rights over a later domain with the target's id. (C 4.17 keeps a released target
/// alive while a stub refers to it: its first RELEASE is acknowledged but the domain
/// stays introduced; we release it and end the relation.)
#[test]
fn a_stub_domain_loses_its_released_target() {
    let mut t = T::new(Config::default());
    let d0 = t.dom0;
    t.guest(5);
    let stub = t.guest(6);
    assert_eq!(
        t.req(
            d0,
            Request::SetTarget {
                domid: 6,
                target: 5
            },
            0
        ),
        "OK\0"
    );
    assert_eq!(t.req(stub, Request::Read("/local/domain/5"), 0), "");
    assert_eq!(t.req(d0, Request::Release(5), 0), "OK\0");
    assert_eq!(t.req(d0, Request::IsDomainIntroduced(5), 0), "F\0");
    t.guest(5);
    assert_eq!(t.req(stub, Request::Read("/local/domain/5"), 0), "!EACCES");
    assert_eq!(
        t.req(
            stub,
            Request::Write {
                path: "/local/domain/5/x",
                value: b"1"
            },
            0
        ),
        "!EACCES"
    );
}

/// Issue 10 item 3: the node quota holds across parallel transactions. Like C 4.17
/// (`transaction_fix_domains`), a request in a transaction is checked against the
/// nodes the domain owns outside it, and the commit of a transaction that created nodes
/// fails with `ENOSPC` when the domain would then own `nodes_per_domain` nodes or more
/// (one fewer than outside transactions, as in C).
#[test]
fn parallel_transactions_cannot_exceed_the_node_quota() {
    let mut t = T::new(Config {
        quotas: Quotas {
            nodes_per_domain: 20,
            ..Quotas::default()
        },
        ..Config::default()
    });
    let g = t.guest(5);
    for i in 0..10 {
        assert_eq!(t.write(g, &format!("n{i}"), b"", 0), "OK\0");
    }
    // 11 nodes (the home too). Ten transactions of 9 new nodes each, in different
    // places (no conflicts between them).
    for tx in 1..=10u32 {
        assert_eq!(t.req(g, Request::TransactionStart, 0), format!("{tx}\0"));
        for i in 0..9 {
            assert_eq!(t.write(g, &format!("n{}/{i}", tx - 1), b"", tx), "OK\0");
        }
    }
    for tx in 1..=10u32 {
        assert_eq!(
            t.req(g, Request::TransactionEnd { commit: true }, tx),
            "!ENOSPC",
            "transaction {tx}"
        );
    }
    assert_eq!(t.s.node_count(), 3 + 2 + 11);
    // A request in a transaction only sees what the domain owns outside it (C).
    assert_eq!(t.req(g, Request::TransactionStart, 0), "11\0");
    for i in 0..12 {
        assert_eq!(t.write(g, &format!("n2/big/{i}"), b"", 11), "OK\0");
    }
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: true }, 11),
        "!ENOSPC"
    );
    // Two in parallel: the first brings the domain to 19 nodes, the second would
    // bring it to 20.
    assert_eq!(t.req(g, Request::TransactionStart, 0), "12\0");
    assert_eq!(t.req(g, Request::TransactionStart, 0), "13\0");
    for i in 0..8 {
        assert_eq!(t.write(g, &format!("n0/a{i}"), b"", 12), "OK\0");
    }
    assert_eq!(t.write(g, "n1/b", b"", 13), "OK\0");
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: true }, 12),
        "OK\0"
    );
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: true }, 13),
        "!ENOSPC"
    );
    // A transaction that creates nothing is not checked; outside one, 20 is allowed.
    assert_eq!(t.req(g, Request::TransactionStart, 0), "14\0");
    assert_eq!(t.write(g, "n0/a0", b"v", 14), "OK\0");
    assert_eq!(
        t.req(g, Request::TransactionEnd { commit: true }, 14),
        "OK\0"
    );
    assert_eq!(t.write(g, "c", b"", 0), "OK\0");
    assert_eq!(t.write(g, "d", b"", 0), "!ENOSPC");
    t.s.check_tree().unwrap();
}

/// Issue 10 item 4: a watch event whose payload would exceed 4096 bytes is not sent
/// (C's `send_event` drops it), and it is counted; shorter events still go.
#[test]
fn oversized_watch_events_are_dropped_and_counted() {
    let mut t = T::new(Config::default());
    let d0 = t.dom0;
    let g = t.guest(5);
    let token = "t".repeat(3000);
    let out = t.raw(
        d0,
        &msg(
            &Request::Watch {
                path: "/local/domain/5",
                token: &token,
            },
            0,
        ),
    );
    assert_eq!(T::events(&out, d0).len(), 1, "the registration event");
    let long = format!("data/{}", vec!["a".repeat(100); 18].join("/"));
    let out = t.raw(
        g,
        &msg(
            &Request::Write {
                path: &long,
                value: b"v",
            },
            0,
        ),
    );
    assert_eq!(T::events(&out, d0), Vec::<String>::new());
    assert_eq!(t.s.oversized_events_dropped(), 1);
    let out = t.raw(
        g,
        &msg(
            &Request::Write {
                path: "data/short",
                value: b"v",
            },
            0,
        ),
    );
    assert_eq!(
        T::events(&out, d0),
        [format!("/local/domain/5/data/short {token} ")]
    );
    assert_eq!(t.s.oversized_events_dropped(), 1);
}

/// Found by the `xenstored` fuzz target: like C (which writes, and so size-checks, every
/// node it creates), a missing ancestor created for a guest is refused when its record —
/// the next component's name as its only child — would reach the entry size quota.
#[test]
fn created_ancestors_respect_the_entry_size_quota() {
    let mut t = T::new(Config {
        quotas: Quotas {
            entry_size: 100,
            ..Quotas::default()
        },
        ..Config::default()
    });
    let g = t.guest(5);
    // "x"'s record: 24 + 8 (one perm) + 70 + 1 >= 100.
    let long = format!("x/{}", "a".repeat(70));
    fn w(path: &str) -> Request<'_> {
        Request::Write { path, value: b"" }
    }
    assert_eq!(t.req(g, w(&long), 0), "!ENOSPC");
    assert_eq!(t.req(g, Request::Read("x"), 0), "!ENOENT");
    // Shorter fits: 24 + 8 + 66 + 1 = 99 < 100.
    let fits = format!("x/{}", "a".repeat(66));
    assert_eq!(t.req(g, w(&fits), 0), "OK\0");
    // In a transaction too.
    let tx = t.req(g, Request::TransactionStart, 0);
    let tx: u32 = tx.trim_end_matches('\0').parse().unwrap();
    assert_eq!(t.req(g, w(&format!("y/{}", "b".repeat(70))), tx), "!ENOSPC");
    // dom0 has no quota.
    let d0 = t.dom0;
    assert_eq!(
        t.req(d0, w(&format!("/local/domain/5/z/{long}")), 0),
        "OK\0"
    );
}
