/*
 * pfkey_preload.c - run unmodified PF_KEY programs against pfkeyd.
 *
 * Loaded with LD_PRELOAD (see `pfkeyd exec`), this library turns
 * socket(PF_KEY, SOCK_RAW, PF_KEY_V2) into a connected AF_UNIX SOCK_SEQPACKET
 * socket to pfkeyd ($PFKEY_SOCKET; otherwise /run/pfkeyd.sock for root and
 * $XDG_RUNTIME_DIR/pfkeyd.sock for others).  On SOCK_SEQPACKET one recv returns
 * one message and MSG_PEEK of the 16-byte header leaves the message in place, so
 * the clients' own read loops work as they do on a kernel socket.  What the
 * library adds on the redirected descriptors:
 *
 *  - every send (send, sendto, sendmsg, write) carries MSG_NOSIGNAL: a dead
 *    daemon gives EPIPE, never SIGPIPE;
 *  - a kernel queues its reply before send() returns; a daemon answers a little
 *    later.  A non-blocking read (O_NONBLOCK or MSG_DONTWAIT) that finds nothing
 *    while one of this process's requests is unanswered therefore waits for the
 *    reply, at most PFKEY_PRELOAD_WAIT_MS (default 1000) after that request;
 *  - replies are recognised by sadb_msg_pid == getpid(), as the clients
 *    themselves do;
 *  - a kernel PF_KEY socket never reads end of file, and clients drain their
 *    socket until a read fails (strongSwan's charon: recv(MSG_DONTWAIT) until it
 *    returns less than 0).  Once the daemon has gone, a read (recv, recvfrom,
 *    recvmsg, read and their _FORTIFY_SOURCE variants) therefore fails with
 *    ECONNRESET where the SEQPACKET socket would return 0, so that such a loop
 *    ends instead of spinning;
 *  - setsockopt(IP_IPSEC_POLICY / IPV6_IPSEC_POLICY) on any socket goes to pfkeyd's
 *    socket-policy socket (the PF_KEY socket's path with .sock replaced by
 *    .sockpol), where a daemon with its data plane on keeps it as a policy of
 *    that socket (pfkeyd.8 PER-SOCKET POLICIES).  One connection is held per
 *    socket that has a policy; closing the socket closes it, which removes the
 *    socket's policies.  The request is the socket's family, protocol, bound
 *    address and port, then the sadb_x_policy; the answer is an errno, which
 *    setsockopt returns.  With no such socket (no data plane) the call is tried on
 *    the kernel and reported as successful if the kernel refuses it, as before.
 *
 * Every other socket and call passes through untouched.  Descriptors duplicated
 * with dup() are not tracked: they behave as plain SEQPACKET sockets.  A tracked
 * number that is closed behind the library's back (dup2 onto it, close_range) and
 * reused is recognised as no longer the same socket and passed through too.
 *
 * Written for pfkeyd; built on first use by `pfkeyd preload-path`.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>

#ifndef PF_KEY
#define PF_KEY 15
#endif
#define PFKEY_V2 2
#ifndef IP_IPSEC_POLICY
#define IP_IPSEC_POLICY 16
#endif
#ifndef IPV6_IPSEC_POLICY
#define IPV6_IPSEC_POLICY 34
#endif
#define HEADER_LEN 16
#define PID_OFFSET 12

struct pfk_state {
	unsigned char tracked;
	int policy_conn;	/* 1 + the socket-policy connection of this descriptor, or 0 */
	unsigned pending;	/* requests sent and not yet answered */
	struct timespec last_send;
	dev_t dev;		/* which socket the descriptor was when it was tracked */
	ino_t ino;
};

/* The states live in chunks of CHUNK_SIZE descriptors that are allocated once and
 * never moved or freed, so a lookup needs no lock: another thread's track() can
 * only add a chunk, never pull one from under a reader (a realloc'ed table could). */
#define CHUNK_BITS 10
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define MAX_CHUNKS 1024u	/* descriptors below 1 Mi can be tracked */
static struct pfk_state *_Atomic chunks[MAX_CHUNKS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_socket)(int, int, int);
static int (*real_close)(int);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_read)(int, void *, size_t);
static int (*real_setsockopt)(int, int, int, const void *, socklen_t);
static int (*real_fcntl)(int, int, ...);

static void *next(const char *name)
{
	void *fn = dlsym(RTLD_NEXT, name);
	if (fn == NULL) {
		fprintf(stderr, "pfkeyd preload: cannot find %s: %s\n", name, dlerror());
		abort();
	}
	return fn;
}

__attribute__((constructor)) static void init(void)
{
	real_socket = next("socket");
	real_close = next("close");
	real_send = next("send");
	real_sendto = next("sendto");
	real_sendmsg = next("sendmsg");
	real_write = next("write");
	real_recv = next("recv");
	real_recvfrom = next("recvfrom");
	real_recvmsg = next("recvmsg");
	real_read = next("read");
	real_setsockopt = next("setsockopt");
	real_fcntl = next("fcntl");
}

static struct pfk_state *slot(int fd)
{
	if (fd < 0 || (unsigned)fd >= MAX_CHUNKS * CHUNK_SIZE)
		return NULL;
	struct pfk_state *chunk = atomic_load_explicit(&chunks[(unsigned)fd >> CHUNK_BITS], memory_order_acquire);
	return chunk == NULL ? NULL : &chunk[(unsigned)fd & (CHUNK_SIZE - 1)];
}

static void untrack(int fd)
{
	pthread_mutex_lock(&lock);
	struct pfk_state *st = slot(fd);
	if (st != NULL)
		memset(st, 0, sizeof(*st));
	pthread_mutex_unlock(&lock);
}

/* The state of a redirected descriptor, or NULL for every other one.
 *
 * A tracked number stops being ours when the socket is closed without close():
 * dup2()/dup3() onto it, close_range(), a libc-internal close.  The number is then
 * reused for a pipe, a file or a UDP socket, which must not be sent to with
 * send() or stripped of its sendto() address.  So a tracked descriptor counts
 * only while it is still the same socket (device and inode); otherwise it is
 * forgotten.  Untracked descriptors cost no system call. */
static struct pfk_state *state(int fd)
{
	struct pfk_state *st = slot(fd);
	if (st == NULL || !st->tracked)
		return NULL;
	int saved = errno;
	struct stat sb;
	int same = fstat(fd, &sb) == 0 && sb.st_dev == st->dev && sb.st_ino == st->ino;
	errno = saved;
	if (!same) {
		untrack(fd);
		return NULL;
	}
	return st;
}

/* Start tracking a new PF_KEY descriptor: 0, or the errno for socket() to fail with. */
static int track(int fd)
{
	struct stat sb;
	if (fd < 0 || (unsigned)fd >= MAX_CHUNKS * CHUNK_SIZE)
		return EMFILE;
	if (fstat(fd, &sb) != 0)
		return errno;
	pthread_mutex_lock(&lock);
	unsigned index = (unsigned)fd >> CHUNK_BITS;
	struct pfk_state *chunk = atomic_load_explicit(&chunks[index], memory_order_relaxed);
	if (chunk == NULL) {
		chunk = calloc(CHUNK_SIZE, sizeof(*chunk));
		if (chunk == NULL) {
			pthread_mutex_unlock(&lock);
			return ENOMEM;
		}
		atomic_store_explicit(&chunks[index], chunk, memory_order_release);
	}
	struct pfk_state *st = &chunk[(unsigned)fd & (CHUNK_SIZE - 1)];
	memset(st, 0, sizeof(*st));
	st->dev = sb.st_dev;
	st->ino = sb.st_ino;
	st->tracked = 1;
	pthread_mutex_unlock(&lock);
	return 0;
}

static const char *socket_path(char *buf, size_t len)
{
	const char *path = getenv("PFKEY_SOCKET");
	if (path != NULL && *path != '\0')
		return path;
	if (geteuid() == 0)
		return "/run/pfkeyd.sock";
	const char *runtime = getenv("XDG_RUNTIME_DIR");
	if (runtime == NULL || *runtime == '\0')
		return "/run/pfkeyd.sock";
	snprintf(buf, len, "%s/pfkeyd.sock", runtime);
	return buf;
}

int socket(int domain, int type, int protocol)
{
	int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (domain != PF_KEY || base != SOCK_RAW || protocol != PFKEY_V2)
		return real_socket(domain, type, protocol);

	int fd = real_socket(AF_UNIX, SOCK_SEQPACKET | (type & (SOCK_NONBLOCK | SOCK_CLOEXEC)), 0);
	if (fd < 0)
		return -1;
	char buf[sizeof(((struct sockaddr_un *)0)->sun_path) + 32];
	const char *path = socket_path(buf, sizeof(buf));
	struct sockaddr_un sun;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		real_close(fd);
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sun.sun_path, path);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 && errno != EINPROGRESS) {
		int saved = errno;
		fprintf(stderr, "pfkeyd preload: connect %s: %s\n", path, strerror(saved));
		real_close(fd);
		errno = saved;
		return -1;
	}
	int failed = track(fd);
	if (failed != 0) {
		real_close(fd);
		errno = failed;
		return -1;
	}
	return fd;
}

int close(int fd)
{
	struct pfk_state *st = slot(fd);
	if (st != NULL && st->tracked)
		untrack(fd);
	if (st != NULL && st->policy_conn > 0) {
		pthread_mutex_lock(&lock);
		int conn = st->policy_conn - 1;
		st->policy_conn = 0;
		pthread_mutex_unlock(&lock);
		real_close(conn); /* pfkeyd removes the socket's policies */
	}
	return real_close(fd);
}

static void sent(struct pfk_state *st, ssize_t n)
{
	if (n < HEADER_LEN)
		return;
	pthread_mutex_lock(&lock);
	st->pending++;
	clock_gettime(CLOCK_MONOTONIC, &st->last_send);
	pthread_mutex_unlock(&lock);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	struct pfk_state *st = state(fd);
	if (st == NULL)
		return real_send(fd, buf, len, flags);
	ssize_t n = real_send(fd, buf, len, flags | MSG_NOSIGNAL);
	sent(st, n);
	return n;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen)
{
	struct pfk_state *st = state(fd);
	if (st == NULL)
		return real_sendto(fd, buf, len, flags, to, tolen);
	/* A connected SEQPACKET socket takes no address. */
	ssize_t n = real_send(fd, buf, len, flags | MSG_NOSIGNAL);
	sent(st, n);
	return n;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct pfk_state *st = state(fd);
	if (st == NULL)
		return real_sendmsg(fd, msg, flags);
	struct msghdr copy = *msg;
	copy.msg_name = NULL;
	copy.msg_namelen = 0;
	ssize_t n = real_sendmsg(fd, &copy, flags | MSG_NOSIGNAL);
	sent(st, n);
	return n;
}

ssize_t write(int fd, const void *buf, size_t len)
{
	struct pfk_state *st = state(fd);
	if (st == NULL)
		return real_write(fd, buf, len);
	ssize_t n = real_send(fd, buf, len, MSG_NOSIGNAL);
	sent(st, n);
	return n;
}

static long wait_budget_ms(void)
{
	const char *text = getenv("PFKEY_PRELOAD_WAIT_MS");
	long ms = text != NULL ? strtol(text, NULL, 10) : 1000;
	return ms < 0 ? 0 : ms;
}

/* Before a read that must not block: if a request of ours is unanswered, give the
 * daemon until PFKEY_PRELOAD_WAIT_MS after that request to answer. */
static void await_reply(int fd, struct pfk_state *st, int flags)
{
	if (st->pending == 0)
		return;
	int nonblocking = (flags & MSG_DONTWAIT) || (real_fcntl(fd, F_GETFL) & O_NONBLOCK);
	if (!nonblocking)
		return;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	long elapsed = (now.tv_sec - st->last_send.tv_sec) * 1000 + (now.tv_nsec - st->last_send.tv_nsec) / 1000000;
	long left = wait_budget_ms() - elapsed;
	if (left <= 0)
		return;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int rc;
	do {
		rc = poll(&p, 1, (int)left);
	} while (rc < 0 && errno == EINTR);
}

/* After a read that consumed a message: a message carrying our pid answers one
 * of our requests. */
static void received(struct pfk_state *st, const void *buf, ssize_t n, int flags)
{
	if (n < HEADER_LEN || (flags & MSG_PEEK))
		return;
	uint32_t pid;
	memcpy(&pid, (const char *)buf + PID_OFFSET, sizeof(pid));
	if (pid != (uint32_t)getpid())
		return;
	pthread_mutex_lock(&lock);
	if (st->pending > 0)
		st->pending--;
	pthread_mutex_unlock(&lock);
}

/* A read of a redirected descriptor returned n for a buffer of `asked` bytes: end
 * of file (the daemon has gone) becomes -1 with ECONNRESET.  pfkeyd never sends
 * an empty message, so 0 into a buffer of any size is end of file; a read into an
 * empty buffer returns 0 whatever is queued, so there a peek tells. */
static ssize_t eof_as_error(int fd, ssize_t n, size_t asked)
{
	if (n != 0)
		return n;
	if (asked == 0) {
		char byte;
		int saved = errno;
		ssize_t peeked = real_recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
		errno = saved;
		if (peeked != 0)
			return 0;
	}
	errno = ECONNRESET;
	return -1;
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen)
{
	struct pfk_state *st = state(fd);
	if (st == NULL)
		return real_recvfrom(fd, buf, len, flags, from, fromlen);
	int saved = errno;
	await_reply(fd, st, flags);
	errno = saved;
	ssize_t n = eof_as_error(fd, real_recvfrom(fd, buf, len, flags, from, fromlen), len);
	received(st, buf, n, flags);
	return n;
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
	struct pfk_state *st = state(fd);
	if (st == NULL)
		return real_recv(fd, buf, len, flags);
	return recvfrom(fd, buf, len, flags, NULL, NULL);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	struct pfk_state *st = state(fd);
	if (st == NULL)
		return real_recvmsg(fd, msg, flags);
	await_reply(fd, st, flags);
	size_t asked = 0;
	for (size_t i = 0; i < (size_t)msg->msg_iovlen; i++)
		asked += msg->msg_iov[i].iov_len;
	ssize_t n = eof_as_error(fd, real_recvmsg(fd, msg, flags), asked);
	if (n >= HEADER_LEN && msg->msg_iovlen > 0 && msg->msg_iov[0].iov_len >= HEADER_LEN)
		received(st, msg->msg_iov[0].iov_base, n, flags);
	return n;
}

ssize_t read(int fd, void *buf, size_t len)
{
	struct pfk_state *st = state(fd);
	if (st == NULL)
		return real_read(fd, buf, len);
	return recvfrom(fd, buf, len, 0, NULL, NULL);
}

/* glibc's _FORTIFY_SOURCE entry points. */
extern void __chk_fail(void) __attribute__((noreturn));

ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags)
{
	if (len > buflen)
		__chk_fail();
	return recv(fd, buf, len, flags);
}

ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags, struct sockaddr *from,
		       socklen_t *fromlen)
{
	if (len > buflen)
		__chk_fail();
	return recvfrom(fd, buf, len, flags, from, fromlen);
}

ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen)
{
	if (len > buflen)
		__chk_fail();
	return read(fd, buf, len);
}

/* The slot of any descriptor, allocating its chunk: NULL only out of range or memory. */
static struct pfk_state *any_slot(int fd)
{
	struct pfk_state *st = slot(fd);
	if (st != NULL || fd < 0 || (unsigned)fd >= MAX_CHUNKS * CHUNK_SIZE)
		return st;
	pthread_mutex_lock(&lock);
	unsigned index = (unsigned)fd >> CHUNK_BITS;
	struct pfk_state *chunk = atomic_load_explicit(&chunks[index], memory_order_relaxed);
	if (chunk == NULL) {
		chunk = calloc(CHUNK_SIZE, sizeof(*chunk));
		if (chunk != NULL)
			atomic_store_explicit(&chunks[index], chunk, memory_order_release);
	}
	pthread_mutex_unlock(&lock);
	return chunk == NULL ? NULL : &chunk[(unsigned)fd & (CHUNK_SIZE - 1)];
}

/* Hand a socket policy to pfkeyd.  Returns 0 or an errno pfkeyd answered, or -1
 * when there is no socket-policy socket to ask (no data plane). */
static int policy_to_pfkeyd(int fd, const void *value, socklen_t len)
{
	struct pfk_state *st = any_slot(fd);
	if (st == NULL)
		return -1;
	int conn = st->policy_conn - 1;
	if (conn < 0) {
		/* No data plane, no socket-policy socket: -1, and setsockopt behaves as before. */
		char buf[sizeof(((struct sockaddr_un *)0)->sun_path) + 32];
		char path[sizeof(buf) + 16];
		const char *pf = socket_path(buf, sizeof(buf));
		size_t n = strlen(pf);
		if (n > 5 && strcmp(pf + n - 5, ".sock") == 0)
			snprintf(path, sizeof(path), "%.*s.sockpol", (int)(n - 5), pf);
		else
			snprintf(path, sizeof(path), "%s.sockpol", pf);
		struct sockaddr_un sun;
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		if (strlen(path) >= sizeof(sun.sun_path))
			return -1;
		strcpy(sun.sun_path, path);
		conn = real_socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (conn < 0)
			return -1;
		if (connect(conn, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
			real_close(conn);
			return -1;
		}
		st->policy_conn = conn + 1;
	}

	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	int proto = 0;
	socklen_t plen = sizeof(proto);
	if (getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0)
		return errno;
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) < 0)
		return errno;
	unsigned char msg[24 + 4096];
	if (len > 4096)
		return EINVAL;
	memset(msg, 0, 24);
	msg[0] = 1;
	msg[1] = (unsigned char)ss.ss_family;
	msg[2] = (unsigned char)proto;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		memcpy(msg + 4, &in->sin_port, 2);
		memcpy(msg + 8, &in->sin_addr, 4);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		memcpy(msg + 4, &in6->sin6_port, 2);
		memcpy(msg + 8, &in6->sin6_addr, 16);
	} else {
		return EAFNOSUPPORT;
	}
	memcpy(msg + 24, value, len);
	if (real_send(conn, msg, 24 + (size_t)len, MSG_NOSIGNAL) < 0)
		return errno;
	struct pollfd pfd = { .fd = conn, .events = POLLIN };
	if (poll(&pfd, 1, (int)wait_budget_ms()) <= 0)
		return ETIMEDOUT;
	int32_t answer = 0;
	ssize_t got = real_recv(conn, &answer, sizeof(answer), 0);
	if (got != (ssize_t)sizeof(answer))
		return got < 0 ? errno : ECONNRESET;
	return answer;
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
	int ipsec = (level == IPPROTO_IP && name == IP_IPSEC_POLICY) ||
		    (level == IPPROTO_IPV6 && name == IPV6_IPSEC_POLICY);
	if (ipsec && value != NULL) {
		int saved = errno;
		int err = policy_to_pfkeyd(fd, value, len);
		if (err == 0) {
			errno = saved;
			return 0;
		}
		if (err > 0) {
			errno = err;
			return -1;
		}
		errno = saved;
	}
	int rc = real_setsockopt(fd, level, name, value, len);
	if (rc < 0 && ipsec)
		return 0; /* no kernel IPsec and no data plane: nothing applies policies */
	return rc;
}
