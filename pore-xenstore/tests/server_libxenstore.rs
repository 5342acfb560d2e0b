//! A small C program on Debian's libxenstore (xs_open, transactions with EAGAIN,
//! watches, permissions, domain calls) run against our server and against Debian's C
//! xenstored: it checks its own expectations and prints a transcript; the transcripts
//! must be identical.
#![cfg(feature = "std")]

mod server_common;

use std::path::Path;
use std::process::Command;

use pore_xenstore::server::Config;
use server_common::*;

const PROGRAM: &str = r#"
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenstore.h>

static int fails;
#define CHECK(c) do { if (!(c)) { printf("FAIL line %d: %s (errno %d)\n", __LINE__, #c, errno); fails++; } } while (0)

static void show_read(struct xs_handle *h, xs_transaction_t t, const char *p) {
    unsigned int len = 0;
    char *v = xs_read(h, t, p, &len);
    if (v) printf("read %s = '%.*s' (%u)\n", p, (int)len, v, len);
    else printf("read %s: errno %s\n", p, strerror(errno));
    free(v);
}

/* Waits (at most 5 s) for one watch event and prints it. */
static int show_event(struct xs_handle *h) {
    struct pollfd pfd = { .fd = xs_fileno(h), .events = POLLIN };
    for (int i = 0; i < 50; i++) {
        char **v = xs_check_watch(h);
        if (v) {
            printf("event %s %s\n", v[XS_WATCH_PATH], v[XS_WATCH_TOKEN]);
            free(v);
            return 1;
        }
        if (errno != EAGAIN) break;
        poll(&pfd, 1, 100);
    }
    printf("no event\n");
    return 0;
}

int main(void) {
    struct xs_handle *h1 = xs_open(0), *h2 = xs_open(0);
    CHECK(h1 && h2);
    if (!h1 || !h2) return 2;

    CHECK(xs_write(h1, XBT_NULL, "/lx/a", "1", 1));
    show_read(h1, XBT_NULL, "/lx/a");
    CHECK(xs_mkdir(h1, XBT_NULL, "/lx/dir"));
    CHECK(xs_write(h1, XBT_NULL, "/lx/bin", "a\0b", 3));
    show_read(h2, XBT_NULL, "/lx/bin");
    unsigned int n = 0;
    char **d = xs_directory(h2, XBT_NULL, "/lx", &n);
    CHECK(d && n == 3);
    for (unsigned int i = 0; d && i < n; i++) printf("dir /lx: %s\n", d[i]);
    free(d);

    struct xs_permissions p[3] = { { .id = 0, .perms = XS_PERM_NONE },
                                   { .id = 5, .perms = XS_PERM_READ },
                                   { .id = 7, .perms = XS_PERM_READ | XS_PERM_WRITE } };
    CHECK(xs_set_permissions(h1, XBT_NULL, "/lx/a", p, 3));
    struct xs_permissions *got = xs_get_permissions(h2, XBT_NULL, "/lx/a", &n);
    CHECK(got && n == 3 && got[1].id == 5 && got[1].perms == XS_PERM_READ);
    for (unsigned int i = 0; got && i < n; i++) printf("perm %u %d\n", got[i].id, got[i].perms);
    free(got);
    CHECK(!xs_set_permissions(h1, XBT_NULL, "/lx/nope", p, 1) && errno == ENOENT);

    /* A transaction's writes are invisible until commit. */
    xs_transaction_t t = xs_transaction_start(h1);
    CHECK(t != XBT_NULL);
    CHECK(xs_write(h1, t, "/lx/t", "in", 2));
    show_read(h1, t, "/lx/t");
    show_read(h2, XBT_NULL, "/lx/t");
    CHECK(xs_transaction_end(h1, t, false));
    show_read(h2, XBT_NULL, "/lx/t");

    /* Abort. */
    t = xs_transaction_start(h1);
    CHECK(xs_write(h1, t, "/lx/ab", "x", 1));
    CHECK(xs_transaction_end(h1, t, true));
    show_read(h2, XBT_NULL, "/lx/ab");

    /* Conflict: read X, X changes, write Y, commit -> EAGAIN. */
    t = xs_transaction_start(h1);
    show_read(h1, t, "/lx/a");
    CHECK(xs_write(h2, XBT_NULL, "/lx/a", "2", 1));
    CHECK(xs_write(h1, t, "/lx/b", "y", 1));
    bool ok = xs_transaction_end(h1, t, false);
    CHECK(!ok && errno == EAGAIN);
    printf("conflict commit: %s %s\n", ok ? "ok" : "failed", ok ? "" : strerror(errno));
    show_read(h2, XBT_NULL, "/lx/b");

    /* Read-modify-write with retries. */
    CHECK(xs_write(h1, XBT_NULL, "/lx/count", "0", 1));
    for (int i = 0; i < 5; i++) {
        for (int attempt = 0; attempt < 10; attempt++) {
            t = xs_transaction_start(h1);
            unsigned int len;
            char *v = xs_read(h1, t, "/lx/count", &len);
            char buf[16];
            snprintf(buf, sizeof buf, "%d", v ? atoi(v) + 1 : -1);
            free(v);
            xs_write(h1, t, "/lx/count", buf, strlen(buf));
            if (xs_transaction_end(h1, t, false)) break;
            CHECK(errno == EAGAIN);
        }
    }
    show_read(h2, XBT_NULL, "/lx/count");

    /* Watches: registration event, a change below, rm. */
    CHECK(xs_watch(h1, "/lx/w", "tok"));
    show_event(h1);
    CHECK(xs_write(h2, XBT_NULL, "/lx/w/x", "1", 1));
    show_event(h1);
    CHECK(xs_rm(h2, XBT_NULL, "/lx/w"));
    show_event(h1);
    CHECK(!xs_watch(h1, "/lx/w", "tok") && errno == EEXIST);
    CHECK(xs_unwatch(h1, "/lx/w", "tok"));
    CHECK(!xs_unwatch(h1, "/lx/w", "tok"));

    /* Domains. */
    char *dp = xs_get_domain_path(h1, 7);
    printf("domain path 7: %s\n", dp ? dp : "(null)");
    free(dp);
    printf("introduced 0: %d, 9: %d\n", xs_is_domain_introduced(h1, 0), xs_is_domain_introduced(h1, 9));
    CHECK(!xs_release_domain(h1, 9));
    CHECK(xs_watch(h2, "@releaseDomain", "rel"));
    show_event(h2);

    CHECK(xs_rm(h1, XBT_NULL, "/lx"));
    show_read(h1, XBT_NULL, "/lx/a");
    CHECK(!xs_rm(h1, XBT_NULL, "/lx/x/y") && errno == ENOENT);

    xs_close(h1);
    xs_close(h2);
    printf("fails %d\n", fails);
    return fails ? 1 : 0;
}
"#;

fn run_prog(prog: &Path, sock: &Path) -> (Option<i32>, String) {
    let out = Command::new("timeout")
        .arg("30")
        .arg(prog)
        .env("XENSTORED_PATH", sock)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn libxenstore_program_against_ours_and_c() {
    let header = Path::new("/usr/include/xenstore.h").exists();
    if !have(
        "libxen-dev and gcc",
        header && Path::new("/usr/bin/gcc").exists(),
    ) {
        return;
    }
    let dir = temp_dir("lx");
    let src = dir.join("xs_prog.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let prog = dir.join("xs_prog");
    let st = Command::new("gcc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&prog)
        .arg(&src)
        .arg("-lxenstore")
        .status()
        .unwrap();
    assert!(st.success(), "gcc failed");

    let ours = Ours::start(Config::default());
    let (code, mine) = run_prog(&prog, &ours.sock);
    assert_eq!(
        code,
        Some(0),
        "libxenstore program failed on our server:\n{mine}"
    );
    assert!(
        mine.contains("conflict commit: failed Resource temporarily unavailable"),
        "{mine}"
    );
    assert!(mine.contains("read /lx/count = '5' (1)"), "{mine}");
    assert!(mine.contains("event /lx/w/x tok"), "{mine}");

    if have("Debian's C xenstored", c_daemon_available()) {
        let c = CDaemon::start(&[]).expect("C xenstored did not start");
        let (code, theirs) = run_prog(&prog, &c.sock);
        assert_eq!(
            code,
            Some(0),
            "libxenstore program failed on C xenstored:\n{theirs}"
        );
        assert_eq!(mine, theirs, "transcripts differ");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
