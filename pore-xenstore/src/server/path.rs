//! Path rules of C xenstored: canonical form, valid characters, length limits.

use crate::wire::ABS_PATH_MAX;

/// The home directory of a domain, `/local/domain/<domid>`.
pub(crate) fn home(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Makes `path` absolute for a connection of domain `domid`: absolute (`/…`) and special
/// (`@…`) paths are kept, anything else is relative to the domain's home.
pub(crate) fn canonical(domid: u32, path: &str) -> (String, bool) {
    if path.starts_with('/') || path.starts_with('@') {
        (path.to_owned(), false)
    } else {
        (format!("/local/domain/{domid}/{path}"), true)
    }
}

fn valid_chars(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

/// Length of the `/local/domain/<id>/` prefix of `path` (at most 5 digits, as C's
/// `%5u`), or 0.
fn local_prefix_len(path: &str) -> usize {
    let Some(rest) = path.strip_prefix("/local/domain/") else {
        return 0;
    };
    let digits = rest.bytes().take(5).take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    "/local/domain/".len() + digits + 1
}

/// C's `is_valid_nodename`: an absolute path (or a special `@` one if allowed), no
/// trailing `/` (except `/` itself), no `//`, only `[A-Za-z0-9-/_@]`, and the part after
/// `/local/domain/<id>/` no longer than `path_max`.
pub(crate) fn is_valid(path: &str, allow_special: bool, path_max: usize) -> bool {
    let special = path.starts_with('@');
    if !(path.starts_with('/') || (allow_special && special)) {
        return false;
    }
    if path.len() > 1 && path.ends_with('/') {
        return false;
    }
    if path.contains("//") {
        return false;
    }
    if path.len() > ABS_PATH_MAX || path.len() - local_prefix_len(path) > path_max {
        return false;
    }
    valid_chars(path)
}

/// The parent of an absolute path (`/` for a top-level node and for `/` itself).
pub(crate) fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of an absolute path.
pub(crate) fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `child` joined under `dir`.
pub(crate) fn join(dir: &str, child: &str) -> String {
    if dir == "/" {
        format!("/{child}")
    } else {
        format!("{dir}/{child}")
    }
}

/// C's `atoi`: optional white space and sign, then decimal digits; anything else stops.
pub(crate) fn atoi(s: &[u8]) -> i64 {
    let mut i = 0;
    while i < s.len() && (s[i] == b' ' || (b'\t'..=b'\r').contains(&s[i])) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut v: i64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.saturating_mul(10).saturating_add(i64::from(s[i] - b'0'));
        i += 1;
    }
    if neg {
        -v
    } else {
        v
    }
}

/// C's `strtol(s, &end, 0)` requiring the whole string to be consumed and at least one
/// digit: decimal, `0x` hex or `0` octal, optional sign. `None` where C reports an error.
pub(crate) fn strtol0_exact(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i] == b' ' || (b'\t'..=b'\r').contains(&b[i])) {
        i += 1;
    }
    let mut neg = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        neg = b[i] == b'-';
        i += 1;
    }
    let rest = &b[i..];
    let (radix, digits) = if rest.len() > 2 && rest[0] == b'0' && (rest[1] | 0x20) == b'x' {
        (16, &rest[2..])
    } else if rest.len() > 1 && rest[0] == b'0' {
        (8, &rest[1..])
    } else {
        (10, rest)
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        let x = (d as char).to_digit(radix)?;
        v = v.checked_mul(i64::from(radix))?.checked_add(i64::from(x))?;
    }
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_matches_c() {
        let ok = |p: &str| is_valid(p, false, 2048);
        assert!(ok("/"));
        assert!(ok("/golden/ok-_@AZaz09"));
        assert!(!ok("/golden//a"));
        assert!(!ok("/golden/a/"));
        assert!(!ok(""));
        assert!(!ok("/golden/a b"));
        assert!(!ok("/golden/dot.x"));
        assert!(!ok("/golden/bad*char"));
        assert!(!ok("@foo"));
        assert!(is_valid("@foo", true, 2048));
        let long = format!("/local/domain/5/{}", "y".repeat(2048));
        assert!(ok(&long));
        let too_long = format!("/local/domain/5/{}", "y".repeat(2049));
        assert!(!ok(&too_long));
        assert!(!is_valid(
            &format!("/local/domain/5/{}", "p".repeat(65)),
            false,
            64
        ));
    }

    #[test]
    fn helpers() {
        assert_eq!(
            canonical(5, "data/x"),
            ("/local/domain/5/data/x".into(), true)
        );
        assert_eq!(canonical(5, "/a"), ("/a".into(), false));
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(atoi(b"abc"), 0);
        assert_eq!(atoi(b"70000"), 70000);
        assert_eq!(strtol0_exact("0x10"), Some(16));
        assert_eq!(strtol0_exact("010"), Some(8));
        assert_eq!(strtol0_exact("0x"), None);
        assert_eq!(strtol0_exact(""), None);
        assert_eq!(strtol0_exact("5a"), None);
        assert_eq!(strtol0_exact("0"), Some(0));
    }
}
