/*
 * nohv.c: lets Debian's xenstored (C) and oxenstored (OCaml), Xen 4.17, run on a Linux
 * machine with no hypervisor, for pore's interop tests and benches. Loaded with
 * LD_PRELOAD by scripts/xenstored/launch.sh, which is the only supported way to use it.
 *
 * What the daemons need, and what stands in for it here (see docs/xenstored-behaviours.md §0):
 *
 *   - C xenstored 4.17 creates its node database only while it introduces dom0, so it
 *     must find "Xen": libxenctrl (interface, domain info), libxenevtchn (its event
 *     channel device), libxengnttab (mapping a guest's store page) and the dom0 store
 *     page and port in /proc/xen/xsd_kva and /proc/xen/xsd_port.
 *   - oxenstored needs the same through its OCaml bindings (xc_domain_getinfolist and
 *     xc_map_foreign_range instead), raises RLIMIT_NOFILE to a value an unprivileged
 *     container may not set, and has its socket and database paths compiled in
 *     (/var/run/xenstored/{socket,db}).
 *
 * Everything fake lives in one directory, $PORE_NOHV_DIR:
 *
 *   evtchn        a FIFO standing for the event channel device. The daemon polls its
 *                 read end; writing a 4-byte native-endian port number wakes it, and it
 *                 then looks at the rings. (Notifications from the daemon are dropped:
 *                 a client of a ring polls it.)
 *   dom<N>.ring   a 4096-byte file: the store ring page of domain N, mapped shared. A
 *                 test that writes this file acts as guest N (after dom0 introduced N).
 *   dom<N>.port   the port the daemon bound for domain N (decimal text), written when
 *                 it binds; the port to write into evtchn to wake it for domain N.
 *   dom<N>.gone   if present, domain N does not exist (every other domid below
 *                 0x7ff0 does, and runs).
 *   xsd_port      dom0's store port as text (no newline: oxenstored parses it whole).
 *   virq.port     the port bound to the domain-exception VIRQ.
 *
 * Paths under /var/run/xenstored/ and /run/xenstored/ (one level) are redirected into
 * $XENSTORED_RUNDIR, and a bind() of the compiled-in socket path goes to $XENSTORED_PATH.
 *
 * Build: gcc -shared -fPIC -O2 -Wall -o nohv.so nohv.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define STORE_PAGE 4096
#define DOM0_STORE_PORT 1
#define NO_MORE_DOMIDS 0x7ff0 /* DOMID_FIRST_RESERVED */

/* ---- the directory and the real libc functions ---- */

/* Formats a path inside $PORE_NOHV_DIR into out; returns out, or NULL if it does not fit. */
static char *nohv_path(char *out, size_t size, const char *fmt, ...)
{
	const char *dir = getenv("PORE_NOHV_DIR");
	char name[128];
	va_list ap;
	int n;

	if (!dir || !*dir)
		dir = "/tmp/pore-nohv";
	va_start(ap, fmt);
	n = vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(name))
		return NULL;
	n = snprintf(out, size, "%s/%s", dir, name);
	return (n < 0 || (size_t)n >= size) ? NULL : out;
}

static void *next_symbol(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static int libc_open(const char *path, int flags, mode_t mode)
{
	static int (*fn)(const char *, int, ...);

	if (!fn)
		fn = next_symbol("open");
	return fn(path, flags, mode);
}

/* Writes "<value>" (plus a newline if asked) to a file of the directory. */
static void put_number(const char *name, unsigned value, int newline)
{
	char path[1024], text[32];
	int fd, len;

	if (!nohv_path(path, sizeof(path), "%s", name))
		return;
	fd = libc_open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	len = snprintf(text, sizeof(text), newline ? "%u\n" : "%u", value);
	if (write(fd, text, (size_t)len) != len)
		fprintf(stderr, "nohv: short write to %s\n", path);
	close(fd);
}

static int domain_gone(uint32_t domid)
{
	char path[1024];

	return nohv_path(path, sizeof(path), "dom%u.gone", domid) && access(path, F_OK) == 0;
}

/* Opens (creating and sizing) the store ring file of a domain. */
static int open_store_page(uint32_t domid)
{
	char path[1024];
	int fd;

	if (!nohv_path(path, sizeof(path), "dom%u.ring", domid))
		return -1;
	fd = libc_open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
	if (fd >= 0 && ftruncate(fd, STORE_PAGE) != 0) {
		close(fd);
		fd = -1;
	}
	return fd;
}

static void *map_store_page(uint32_t domid)
{
	int fd = open_store_page(domid);
	void *page;

	if (fd < 0)
		return NULL;
	page = mmap(NULL, STORE_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return page == MAP_FAILED ? NULL : page;
}

/* ---- open(): /proc/xen/xsd_* and the compiled-in run directory ---- */

/* The part after /var/run/xenstored/ or /run/xenstored/ if it names a file right there. */
static const char *run_dir_file(const char *path)
{
	static const char *const prefixes[] = { "/var/run/xenstored/", "/run/xenstored/" };
	size_t i;

	for (i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
		size_t n = strlen(prefixes[i]);

		if (!strncmp(path, prefixes[i], n) && path[n] && !strchr(path + n, '/'))
			return path + n;
	}
	return NULL;
}

static int redirected_open(const char *path, int flags, mode_t mode)
{
	const char *rundir = getenv("XENSTORED_RUNDIR");
	const char *file;
	char where[1024];

	if (!path)
		return libc_open(path, flags, mode);
	if (!strcmp(path, "/proc/xen/xsd_kva"))
		return open_store_page(0);
	if (!strcmp(path, "/proc/xen/xsd_port")) {
		put_number("xsd_port", DOM0_STORE_PORT, 0);
		if (!nohv_path(where, sizeof(where), "xsd_port"))
			return -1;
		return libc_open(where, O_RDONLY | O_CLOEXEC, 0);
	}
	if (rundir && *rundir && (file = run_dir_file(path)) &&
	    snprintf(where, sizeof(where), "%s/%s", rundir, file) < (int)sizeof(where))
		return libc_open(where, flags, mode);
	return libc_open(path, flags, mode);
}

static mode_t mode_argument(int flags, va_list ap)
{
	return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = mode_argument(flags, ap);
	va_end(ap);
	return redirected_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = mode_argument(flags, ap);
	va_end(ap);
	return redirected_open(path, flags, mode);
}

/* ---- libc: oxenstored's rlimit, socket and run directory ---- */

static int is_compiled_in_socket(const char *path)
{
	return !strcmp(path, "/var/run/xenstored/socket") || !strcmp(path, "/run/xenstored/socket");
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	static int (*fn)(int, const struct sockaddr *, socklen_t);
	const char *want = getenv("XENSTORED_PATH");
	struct sockaddr_un moved;

	if (!fn)
		fn = next_symbol("bind");
	if (addr && addr->sa_family == AF_UNIX && want && *want &&
	    strlen(want) < sizeof(moved.sun_path) &&
	    is_compiled_in_socket(((const struct sockaddr_un *)addr)->sun_path)) {
		memset(&moved, 0, sizeof(moved));
		moved.sun_family = AF_UNIX;
		memcpy(moved.sun_path, want, strlen(want) + 1);
		unlink(want);
		return fn(fd, (const struct sockaddr *)&moved, sizeof(moved));
	}
	return fn(fd, addr, len);
}

int mkdir(const char *path, mode_t mode)
{
	static int (*fn)(const char *, mode_t);
	const char *want = getenv("XENSTORED_PATH");

	if (!fn)
		fn = next_symbol("mkdir");
	if (want && *want &&
	    (!strcmp(path, "/var/run/xenstored") || !strcmp(path, "/run/xenstored")))
		return 0; /* the socket lives elsewhere */
	return fn(path, mode);
}

/* An unprivileged process may not raise its hard limit: keep what it asked for, clamped. */
int setrlimit(__rlimit_resource_t resource, const struct rlimit *limit)
{
	static int (*fn)(__rlimit_resource_t, const struct rlimit *);
	struct rlimit now, wanted;

	if (!fn)
		fn = next_symbol("setrlimit");
	if (fn(resource, limit) == 0)
		return 0;
	if (errno != EPERM || getrlimit(resource, &now) != 0)
		return -1;
	wanted = *limit;
	if (wanted.rlim_max > now.rlim_max)
		wanted.rlim_max = now.rlim_max;
	if (wanted.rlim_cur > wanted.rlim_max)
		wanted.rlim_cur = wanted.rlim_max;
	return fn(resource, &wanted);
}

/* ---- libxenctrl ---- */

struct xc_interface_core {
	int unused;
};
static struct xc_interface_core xc_handle;

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
				unsigned open_flags)
{
	(void)logger;
	(void)dombuild_logger;
	(void)open_flags;
	return &xc_handle;
}

int xc_interface_close(xc_interface *xch)
{
	(void)xch;
	return 0;
}

/* The first existing domain at or after first; 0 past the last one. */
static int next_domain(uint32_t first, uint32_t *domid)
{
	uint32_t d;

	for (d = first; d < NO_MORE_DOMIDS; d++) {
		if (!domain_gone(d)) {
			*domid = d;
			return 1;
		}
	}
	return 0;
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
		      xc_dominfo_t *info)
{
	uint32_t d;

	(void)xch;
	if (max_doms == 0 || !next_domain(first_domid, &d))
		return 0;
	memset(info, 0, sizeof(*info));
	info->domid = d;
	info->running = 1;
	return 1;
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains,
			  xc_domaininfo_t *info)
{
	uint32_t d;

	(void)xch;
	if (max_domains == 0 || !next_domain(first_domain, &d))
		return 0;
	memset(info, 0, sizeof(*info));
	info->domain = d;
	info->flags = XEN_DOMINF_running;
	return 1;
}

void *xc_map_foreign_range(xc_interface *xch, uint32_t dom, int size, int prot,
			   unsigned long mfn)
{
	(void)xch;
	(void)size;
	(void)prot;
	(void)mfn;
	return map_store_page(dom);
}

/* ---- libxengnttab ---- */

struct xengntdev_handle {
	int unused;
};
static struct xengntdev_handle gnttab_handle;

xengnttab_handle *xengnttab_open(xentoollog_logger *logger, unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return &gnttab_handle;
}

int xengnttab_close(xengnttab_handle *xgt)
{
	(void)xgt;
	return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
	(void)xgt;
	(void)nr_grants;
	return 0;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
	(void)xgt;
	(void)ref;
	(void)prot;
	return map_store_page(domid);
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
	(void)xgt;
	return munmap(start_address, (size_t)count * STORE_PAGE);
}

/* ---- libxenevtchn: one FIFO for the whole device ---- */

struct xenevtchn_handle {
	int fifo;
};
static struct xenevtchn_handle evtchn = { -1 };
static unsigned last_port; /* ports handed out so far: 1, 2, ... */

static xenevtchn_handle *evtchn_device(void)
{
	char path[1024];

	if (evtchn.fifo >= 0)
		return &evtchn;
	if (!nohv_path(path, sizeof(path), "evtchn"))
		return NULL;
	unlink(path);
	if (mkfifo(path, 0666) != 0)
		return NULL;
	/* Read and write: the daemon never sees end-of-file when a writer goes away. */
	evtchn.fifo = libc_open(path, O_RDWR | O_CLOEXEC, 0);
	return evtchn.fifo >= 0 ? &evtchn : NULL;
}

xenevtchn_handle *xenevtchn_open(xentoollog_logger *logger, unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return evtchn_device();
}

xenevtchn_handle *xenevtchn_fdopen(xentoollog_logger *logger, int fdno, unsigned open_flags)
{
	(void)logger;
	(void)fdno;
	(void)open_flags;
	return evtchn_device();
}

int xenevtchn_close(xenevtchn_handle *xce)
{
	(void)xce;
	return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
	return xce->fifo;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
	(void)xce;
	(void)virq;
	put_number("virq.port", ++last_port, 1);
	return (xenevtchn_port_or_error_t)last_port;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
						     evtchn_port_t remote_port)
{
	char name[32];

	(void)xce;
	(void)remote_port;
	snprintf(name, sizeof(name), "dom%u.port", domid);
	put_number(name, ++last_port, 1);
	return (xenevtchn_port_or_error_t)last_port;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
	uint32_t port;
	ssize_t got;

	do {
		got = read(xce->fifo, &port, sizeof(port));
	} while (got < 0 && errno == EINTR);
	return got == (ssize_t)sizeof(port) ? (xenevtchn_port_or_error_t)port : -1;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}
