/*
 * pfkey_client.c - a PF_KEY client written the way Linux-built ipsec-tools
 * programs are, run by tests/bridge under the pfkeyd preload bridge.
 *
 * It is compiled against the system's <linux/pfkeyv2.h> and <linux/ipsec.h>
 * with -O2 -D_FORTIFY_SOURCE=2, and reads into a static buffer with a length
 * known only at run time, so glibc routes recv/recvfrom/read through
 * __recv_chk/__recvfrom_chk/__read_chk: the bridge must interpose those too.
 *
 * Usage:
 *   pfkey_client session FILE  the whole session (see main_session); after the
 *                              checks against the live daemon it prints "READY",
 *                              waits for a line on stdin (the test kills the
 *                              daemon meanwhile) and checks that sends now fail
 *                              with an error instead of killing the process, and
 *                              that reads fail with ECONNRESET, never return 0.
 *   pfkey_client peek          REGISTER on a non-blocking socket, then one
 *                              recv(16, MSG_PEEK | MSG_DONTWAIT): exit 0 if it
 *                              returned the header, 3 on EAGAIN.
 *   pfkey_client open          socket(PF_KEY, ...) only: prints its result.
 *
 * Every check prints "ok NAME ..." on success; the first failure prints
 * "FAIL NAME: ..." and exits 1.  A missing "ok" line is a failure too.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <linux/ipsec.h>
#include <linux/pfkeyv2.h>

#define SA_COUNT 1000		/* SAs in the SAD when the DUMP is read */
#define FIRST_SPI 0x1000
#define SPD_PRIORITY 0x80000100u /* not setkey's default 0x80000000: the reply must echo it */
#define KAME_CYCSEQ 0x40	/* the sadb_sa_flags setkey sends by default */

static const unsigned char enc_key[16] = {
	0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
};
static unsigned char auth_key[32];

/* Static, so that its size is known to _FORTIFY_SOURCE while the lengths read
 * into it are not: that is what makes glibc call the __*_chk entry points. */
static unsigned char rbuf[65536];
static unsigned char scratch[4096];
/* Lengths passed through this are unknown at compile time (see above). */
static volatile size_t zero;
#define RUNTIME(n) ((size_t)(n) + zero)

static void fail(const char *step, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));

static void fail(const char *step, const char *fmt, ...)
{
	va_list ap;
	printf("FAIL %s: ", step);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	exit(1);
}

static void ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void ok(const char *fmt, ...)
{
	va_list ap;
	printf("ok ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* ------------------------------------------------------------ building */

struct builder {
	unsigned char buf[2048];
	size_t len;
};

static void *b_ext(struct builder *b, size_t size)
{
	size_t padded = (size + 7) & ~(size_t)7;
	if (b->len + padded > sizeof(b->buf))
		fail("build", "message too long");
	void *p = b->buf + b->len;
	memset(p, 0, padded);
	b->len += padded;
	return p;
}

static void b_init(struct builder *b, uint8_t type, uint8_t satype, uint32_t seq)
{
	b->len = 0;
	struct sadb_msg *m = b_ext(b, sizeof(*m));
	m->sadb_msg_version = PF_KEY_V2;
	m->sadb_msg_type = type;
	m->sadb_msg_satype = satype;
	m->sadb_msg_seq = seq;
	m->sadb_msg_pid = (uint32_t)getpid();
}

static const unsigned char *b_done(struct builder *b)
{
	struct sadb_msg *m = (struct sadb_msg *)b->buf;
	m->sadb_msg_len = (uint16_t)(b->len / 8);
	return b->buf;
}

static void b_sa(struct builder *b, uint32_t spi, uint8_t auth, uint8_t enc, uint32_t flags)
{
	struct sadb_sa *sa = b_ext(b, sizeof(*sa));
	sa->sadb_sa_len = sizeof(*sa) / 8;
	sa->sadb_sa_exttype = SADB_EXT_SA;
	sa->sadb_sa_spi = htonl(spi);
	sa->sadb_sa_auth = auth;
	sa->sadb_sa_encrypt = enc;
	sa->sadb_sa_flags = flags;
}

static void b_sa2(struct builder *b, uint8_t mode)
{
	struct sadb_x_sa2 *sa2 = b_ext(b, sizeof(*sa2));
	sa2->sadb_x_sa2_len = sizeof(*sa2) / 8;
	sa2->sadb_x_sa2_exttype = SADB_X_EXT_SA2;
	sa2->sadb_x_sa2_mode = mode;
}

static void b_addr(struct builder *b, uint16_t exttype, const char *ip)
{
	struct sadb_address *a = b_ext(b, sizeof(*a) + sizeof(struct sockaddr_in));
	a->sadb_address_len = (sizeof(*a) + sizeof(struct sockaddr_in)) / 8;
	a->sadb_address_exttype = exttype;
	a->sadb_address_proto = IPSEC_ULPROTO_ANY;
	a->sadb_address_prefixlen = 32;
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	if (inet_pton(AF_INET, ip, &sin.sin_addr) != 1)
		fail("build", "bad address %s", ip);
	memcpy(a + 1, &sin, sizeof(sin));
}

static void b_key(struct builder *b, uint16_t exttype, const unsigned char *key, size_t len)
{
	struct sadb_key *k = b_ext(b, sizeof(*k) + len);
	k->sadb_key_len = (uint16_t)((sizeof(*k) + len + 7) / 8);
	k->sadb_key_exttype = exttype;
	k->sadb_key_bits = (uint16_t)(len * 8);
	memcpy(k + 1, key, len);
}

static void b_policy(struct builder *b, uint8_t dir, uint32_t priority)
{
	size_t size = sizeof(struct sadb_x_policy) + sizeof(struct sadb_x_ipsecrequest);
	struct sadb_x_policy *p = b_ext(b, size);
	p->sadb_x_policy_len = (uint16_t)(size / 8);
	p->sadb_x_policy_exttype = SADB_X_EXT_POLICY;
	p->sadb_x_policy_type = IPSEC_POLICY_IPSEC;
	p->sadb_x_policy_dir = dir;
	p->sadb_x_policy_priority = priority;
	struct sadb_x_ipsecrequest *r = (struct sadb_x_ipsecrequest *)(p + 1);
	r->sadb_x_ipsecrequest_len = sizeof(*r); /* in bytes on Linux */
	r->sadb_x_ipsecrequest_proto = IPPROTO_ESP;
	r->sadb_x_ipsecrequest_mode = IPSEC_MODE_TRANSPORT;
	r->sadb_x_ipsecrequest_level = IPSEC_LEVEL_REQUIRE;
}

/* An ESP transport SA 10.0.0.1 -> 10.0.0.2 with AES-CBC-128 and HMAC-SHA-256,
 * extensions in the order setkey sends them. */
static void build_add(struct builder *b, uint32_t spi, uint32_t seq)
{
	b_init(b, SADB_ADD, SADB_SATYPE_ESP, seq);
	b_key(b, SADB_EXT_KEY_ENCRYPT, enc_key, sizeof(enc_key));
	b_key(b, SADB_EXT_KEY_AUTH, auth_key, sizeof(auth_key));
	b_sa(b, spi, SADB_X_AALG_SHA2_256HMAC, SADB_X_EALG_AESCBC, KAME_CYCSEQ);
	b_sa2(b, IPSEC_MODE_TRANSPORT);
	b_addr(b, SADB_EXT_ADDRESS_SRC, "10.0.0.1");
	b_addr(b, SADB_EXT_ADDRESS_DST, "10.0.0.2");
}

/* ------------------------------------------------------------ I/O */

static void send_msg(int fd, const char *step, struct builder *b)
{
	const unsigned char *msg = b_done(b);
	ssize_t n = send(fd, msg, b->len, 0);
	if (n != (ssize_t)b->len)
		fail(step, "send returned %zd: %s", n, strerror(errno));
}

/* libipsec's pfkey_recv: recv the 16-byte header with MSG_PEEK, then recv exactly
 * sadb_msg_len * 8 bytes; anything else is an error. */
static struct sadb_msg *recv_msg(int fd, const char *step)
{
	struct sadb_msg hdr;
	ssize_t n = recv(fd, &hdr, sizeof(hdr), MSG_PEEK);
	if (n != (ssize_t)sizeof(hdr))
		fail(step, "peek returned %zd: %s", n, n < 0 ? strerror(errno) : "short");
	size_t len = (size_t)hdr.sadb_msg_len * 8;
	if (len < sizeof(hdr))
		fail(step, "sadb_msg_len %u", hdr.sadb_msg_len);
	n = recv(fd, rbuf, len, 0); /* __recv_chk: rbuf's size is known, len is not */
	if (n != (ssize_t)len)
		fail(step, "recv returned %zd, header says %zu", n, len);
	return (struct sadb_msg *)rbuf;
}

/* The same with read(2) for the full message (what setkey's sendkeymsg-style
 * loops do with a plain read); goes through __read_chk. */
static struct sadb_msg *read_msg(int fd, const char *step)
{
	struct sadb_msg hdr;
	ssize_t n = recv(fd, &hdr, sizeof(hdr), MSG_PEEK);
	if (n != (ssize_t)sizeof(hdr))
		fail(step, "peek returned %zd", n);
	size_t len = (size_t)hdr.sadb_msg_len * 8;
	n = read(fd, rbuf, len);
	if (n != (ssize_t)len)
		fail(step, "read returned %zd, header says %zu", n, len);
	return (struct sadb_msg *)rbuf;
}

static void expect_reply(const struct sadb_msg *m, const char *step, uint8_t type, uint32_t seq)
{
	if (m->sadb_msg_version != PF_KEY_V2)
		fail(step, "version %u", m->sadb_msg_version);
	if (m->sadb_msg_type != type)
		fail(step, "type %u, expected %u", m->sadb_msg_type, type);
	if (m->sadb_msg_errno != 0)
		fail(step, "errno %u (%s)", m->sadb_msg_errno, strerror(m->sadb_msg_errno));
	if (m->sadb_msg_seq != seq)
		fail(step, "seq %u, expected %u", m->sadb_msg_seq, seq);
	if (m->sadb_msg_pid != (uint32_t)getpid())
		fail(step, "pid %u, expected %d", m->sadb_msg_pid, (int)getpid());
}

/* The extension of that type in a message, or NULL; checks the framing. */
static const struct sadb_ext *find_ext(const struct sadb_msg *m, const char *step, uint16_t type)
{
	const unsigned char *base = (const unsigned char *)m;
	size_t total = (size_t)m->sadb_msg_len * 8;
	size_t off = sizeof(*m);
	const struct sadb_ext *found = NULL;
	while (off < total) {
		const struct sadb_ext *e = (const struct sadb_ext *)(base + off);
		size_t len = (size_t)e->sadb_ext_len * 8;
		if (off + sizeof(*e) > total || len == 0 || off + len > total)
			fail(step, "bad extension framing at offset %zu", off);
		if (e->sadb_ext_type > SADB_EXT_MAX)
			fail(step, "extension type %u above SADB_EXT_MAX", e->sadb_ext_type);
		if (e->sadb_ext_type == type)
			found = e;
		off += len;
	}
	return found;
}

static const struct sadb_ext *need_ext(const struct sadb_msg *m, const char *step, uint16_t type)
{
	const struct sadb_ext *e = find_ext(m, step, type);
	if (e == NULL)
		fail(step, "no extension of type %u", type);
	return e;
}

static void check_address(const struct sadb_msg *m, const char *step, uint16_t type, const char *ip)
{
	const struct sadb_address *a = (const struct sadb_address *)need_ext(m, step, type);
	struct sockaddr_in sin;
	memcpy(&sin, a + 1, sizeof(sin));
	char text[INET_ADDRSTRLEN];
	if (sin.sin_family != AF_INET || inet_ntop(AF_INET, &sin.sin_addr, text, sizeof(text)) == NULL ||
	    strcmp(text, ip) != 0)
		fail(step, "address %u is not %s", type, ip);
}

static void check_key(const struct sadb_msg *m, const char *step, uint16_t type, const unsigned char *key,
		      size_t len)
{
	const struct sadb_key *k = (const struct sadb_key *)need_ext(m, step, type);
	if (k->sadb_key_bits != len * 8 || memcmp(k + 1, key, len) != 0)
		fail(step, "key %u differs (%u bits)", type, k->sadb_key_bits);
}

static double elapsed_ms(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - since->tv_sec) * 1e3 + (double)(now.tv_nsec - since->tv_nsec) / 1e6;
}

static void set_nonblocking(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) < 0)
		fail("fcntl", "%s", strerror(errno));
}

static int open_pfkey(void)
{
	int fd = socket(PF_KEY, SOCK_RAW, PF_KEY_V2);
	if (fd < 0)
		fail("socket", "socket(PF_KEY, SOCK_RAW, PF_KEY_V2): %s", strerror(errno));
	return fd;
}

/* ------------------------------------------------------------ the steps */

/* racoon's start: O_NONBLOCK, REGISTER, then at once recv(16, MSG_PEEK | MSG_DONTWAIT).
 * A kernel has queued the reply by then; the bridge must wait for the daemon's.
 * The immediate reads go through __recv_chk, __read_chk and __recvfrom_chk in turn. */
static void step_register(int fd)
{
	struct builder b;
	set_nonblocking(fd, 1);
	b_init(&b, SADB_REGISTER, SADB_SATYPE_ESP, 1);
	send_msg(fd, "register", &b);
	ssize_t n = recv(fd, rbuf, RUNTIME(sizeof(struct sadb_msg)), MSG_PEEK | MSG_DONTWAIT);
	if (n != (ssize_t)sizeof(struct sadb_msg))
		fail("register-peek", "immediate MSG_PEEK|MSG_DONTWAIT returned %zd: %s", n,
		     n < 0 ? strerror(errno) : "short");
	ok("register-peek %zd bytes", n);
	struct sadb_msg *m = recv_msg(fd, "register");
	expect_reply(m, "register", SADB_REGISTER, 1);
	need_ext(m, "register", SADB_EXT_SUPPORTED_AUTH);
	need_ext(m, "register", SADB_EXT_SUPPORTED_ENCRYPT);
	ok("register %u bytes with SUPPORTED_AUTH and SUPPORTED_ENCRYPT", m->sadb_msg_len * 8u);

	/* Still non-blocking: read() at once (no flags; O_NONBLOCK alone). */
	b_init(&b, SADB_REGISTER, SADB_SATYPE_UNSPEC, 2);
	send_msg(fd, "register-read", &b);
	n = read(fd, rbuf, RUNTIME(sizeof(rbuf)));
	if (n < (ssize_t)sizeof(struct sadb_msg))
		fail("register-read", "immediate read returned %zd: %s", n, n < 0 ? strerror(errno) : "short");
	expect_reply((struct sadb_msg *)rbuf, "register-read", SADB_REGISTER, 2);
	ok("register-read %zd bytes", n);

	b_init(&b, SADB_REGISTER, SADB_SATYPE_UNSPEC, 3);
	send_msg(fd, "register-recvfrom", &b);
	n = recvfrom(fd, rbuf, RUNTIME(sizeof(rbuf)), MSG_DONTWAIT, NULL, NULL);
	if (n < (ssize_t)sizeof(struct sadb_msg))
		fail("register-recvfrom", "immediate recvfrom returned %zd: %s", n, n < 0 ? strerror(errno) : "short");
	expect_reply((struct sadb_msg *)rbuf, "register-recvfrom", SADB_REGISTER, 3);
	ok("register-recvfrom %zd bytes", n);
	set_nonblocking(fd, 0);
}

static void step_add_get(int fd)
{
	struct builder b;
	build_add(&b, FIRST_SPI, 0);
	send_msg(fd, "add", &b);
	struct sadb_msg *m = recv_msg(fd, "add");
	expect_reply(m, "add", SADB_ADD, 0);
	ok("add spi %#x", FIRST_SPI);

	b_init(&b, SADB_GET, SADB_SATYPE_ESP, 7);
	b_sa(&b, FIRST_SPI, 0, 0, KAME_CYCSEQ);
	b_sa2(&b, IPSEC_MODE_ANY);
	b_addr(&b, SADB_EXT_ADDRESS_SRC, "10.0.0.1");
	b_addr(&b, SADB_EXT_ADDRESS_DST, "10.0.0.2");
	send_msg(fd, "get", &b);
	m = read_msg(fd, "get");
	expect_reply(m, "get", SADB_GET, 7);
	const struct sadb_sa *sa = (const struct sadb_sa *)need_ext(m, "get", SADB_EXT_SA);
	if (ntohl(sa->sadb_sa_spi) != FIRST_SPI || sa->sadb_sa_state != SADB_SASTATE_MATURE ||
	    sa->sadb_sa_auth != SADB_X_AALG_SHA2_256HMAC || sa->sadb_sa_encrypt != SADB_X_EALG_AESCBC)
		fail("get", "SA spi %#x state %u auth %u enc %u", ntohl(sa->sadb_sa_spi), sa->sadb_sa_state,
		     sa->sadb_sa_auth, sa->sadb_sa_encrypt);
	check_address(m, "get", SADB_EXT_ADDRESS_SRC, "10.0.0.1");
	check_address(m, "get", SADB_EXT_ADDRESS_DST, "10.0.0.2");
	check_key(m, "get", SADB_EXT_KEY_ENCRYPT, enc_key, sizeof(enc_key));
	check_key(m, "get", SADB_EXT_KEY_AUTH, auth_key, sizeof(auth_key));
	need_ext(m, "get", SADB_EXT_LIFETIME_CURRENT);
	ok("get mature SA with both keys");
}

static void step_dump(int fd)
{
	struct builder b;
	for (uint32_t i = 1; i < SA_COUNT; i++) {
		build_add(&b, FIRST_SPI + i, 0);
		send_msg(fd, "add-many", &b);
		expect_reply(recv_msg(fd, "add-many"), "add-many", SADB_ADD, 0);
	}
	ok("add-many %d SAs in all", SA_COUNT);

	static unsigned char seen[SA_COUNT];
	memset(seen, 0, sizeof(seen));
	b_init(&b, SADB_DUMP, SADB_SATYPE_ESP, 0);
	send_msg(fd, "dump", &b);
	int count = 0;
	for (;;) {
		struct sadb_msg *m = recv_msg(fd, "dump");
		if (m->sadb_msg_type != SADB_DUMP || m->sadb_msg_errno != 0 || m->sadb_msg_pid != (uint32_t)getpid())
			fail("dump", "entry %d: type %u errno %u pid %u", count, m->sadb_msg_type, m->sadb_msg_errno,
			     m->sadb_msg_pid);
		const struct sadb_sa *sa = (const struct sadb_sa *)need_ext(m, "dump", SADB_EXT_SA);
		uint32_t index = ntohl(sa->sadb_sa_spi) - FIRST_SPI;
		if (index >= SA_COUNT || seen[index])
			fail("dump", "entry %d: unexpected or repeated spi %#x", count, ntohl(sa->sadb_sa_spi));
		seen[index] = 1;
		need_ext(m, "dump", SADB_EXT_ADDRESS_SRC);
		need_ext(m, "dump", SADB_EXT_ADDRESS_DST);
		count++;
		if (m->sadb_msg_seq == 0)
			break;
		if (count > SA_COUNT)
			fail("dump", "more than %d entries and no seq 0", SA_COUNT);
	}
	if (count != SA_COUNT)
		fail("dump", "%d entries, expected %d", count, SA_COUNT);
	ok("dump %d entries ending at seq 0", count);
}

static void step_spdadd(int fd)
{
	struct builder b;
	b_init(&b, SADB_X_SPDADD, SADB_SATYPE_UNSPEC, 0);
	b_policy(&b, IPSEC_DIR_OUTBOUND, SPD_PRIORITY);
	b_addr(&b, SADB_EXT_ADDRESS_SRC, "10.0.0.1");
	b_addr(&b, SADB_EXT_ADDRESS_DST, "10.0.0.2");
	send_msg(fd, "spdadd", &b);
	struct sadb_msg *m = recv_msg(fd, "spdadd");
	expect_reply(m, "spdadd", SADB_X_SPDADD, 0);
	const struct sadb_x_policy *p = (const struct sadb_x_policy *)need_ext(m, "spdadd", SADB_X_EXT_POLICY);
	if (p->sadb_x_policy_priority != SPD_PRIORITY)
		fail("spdadd", "priority %#x, sent %#x", p->sadb_x_policy_priority, SPD_PRIORITY);
	if (p->sadb_x_policy_id == 0 || p->sadb_x_policy_dir != IPSEC_DIR_OUTBOUND ||
	    p->sadb_x_policy_type != IPSEC_POLICY_IPSEC)
		fail("spdadd", "policy id %u dir %u type %u", p->sadb_x_policy_id, p->sadb_x_policy_dir,
		     p->sadb_x_policy_type);
	ok("spdadd priority %#x id %u", p->sadb_x_policy_priority, p->sadb_x_policy_id);
}

/* racoon's bypass policies on its IKE sockets. */
static void step_socket_policy(int udp)
{
	struct sadb_x_policy pol;
	memset(&pol, 0, sizeof(pol));
	pol.sadb_x_policy_len = sizeof(pol) / 8;
	pol.sadb_x_policy_exttype = SADB_X_EXT_POLICY;
	pol.sadb_x_policy_type = IPSEC_POLICY_BYPASS;
	for (uint8_t dir = IPSEC_DIR_INBOUND; dir <= IPSEC_DIR_OUTBOUND; dir++) {
		pol.sadb_x_policy_dir = dir;
		if (setsockopt(udp, IPPROTO_IP, IP_IPSEC_POLICY, &pol, sizeof(pol)) != 0)
			fail("ip-ipsec-policy", "dir %u: %s", dir, strerror(errno));
	}
	ok("ip-ipsec-policy bypass in and out");
	/* Only the IPsec options are forgiven: another bad option still fails. */
	int one = 1;
	if (setsockopt(udp, IPPROTO_IP, 0x7ffe, &one, sizeof(one)) == 0 || errno != ENOPROTOOPT)
		fail("other-setsockopt", "an unknown IPPROTO_IP option did not fail with ENOPROTOOPT");
	ok("other-setsockopt still fails");
}

/* A UDP socket, a pipe and a regular file of the same process work as usual,
 * including while a PF_KEY request of ours is unanswered. */
static void step_other_fds(int pfkey, int udp, const char *path)
{
	struct builder b;
	b_init(&b, SADB_REGISTER, SADB_SATYPE_UNSPEC, 99);
	send_msg(pfkey, "other-fds", &b); /* answered, but not read yet */

	struct sockaddr_in self;
	socklen_t slen = sizeof(self);
	memset(&self, 0, sizeof(self));
	self.sin_family = AF_INET;
	self.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(udp, (struct sockaddr *)&self, sizeof(self)) != 0 ||
	    getsockname(udp, (struct sockaddr *)&self, &slen) != 0)
		fail("udp", "bind: %s", strerror(errno));
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	ssize_t n = recv(udp, scratch, RUNTIME(64), MSG_DONTWAIT); /* __recv_chk */
	if (n != -1 || (errno != EAGAIN && errno != EWOULDBLOCK))
		fail("udp", "recv on an empty socket returned %zd", n);
	if (elapsed_ms(&start) > 200.0)
		fail("udp", "MSG_DONTWAIT on UDP took %.0f ms", elapsed_ms(&start));
	const char udp_text[] = "hello over udp";
	if (sendto(udp, udp_text, sizeof(udp_text), 0, (struct sockaddr *)&self, slen) != (ssize_t)sizeof(udp_text))
		fail("udp", "sendto: %s", strerror(errno));
	struct sockaddr_in from;
	socklen_t flen = sizeof(from);
	size_t want = strlen(udp_text) + 1;
	n = recvfrom(udp, scratch, RUNTIME(want + 64), 0, (struct sockaddr *)&from, &flen); /* __recvfrom_chk */
	if (n != (ssize_t)want || memcmp(scratch, udp_text, want) != 0 || from.sin_port != self.sin_port)
		fail("udp", "recvfrom returned %zd", n);
	ok("udp datagram to self");

	int p[2];
	if (pipe(p) != 0)
		fail("pipe", "%s", strerror(errno));
	const char pipe_text[] = "hello through a pipe";
	if (write(p[1], pipe_text, sizeof(pipe_text)) != (ssize_t)sizeof(pipe_text))
		fail("pipe", "write: %s", strerror(errno));
	want = strlen(pipe_text) + 1;
	n = read(p[0], scratch, RUNTIME(want)); /* __read_chk */
	if (n != (ssize_t)want || memcmp(scratch, pipe_text, want) != 0)
		fail("pipe", "read returned %zd", n);
	close(p[0]);
	close(p[1]);
	ok("pipe");

	int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (f < 0)
		fail("file", "open %s: %s", path, strerror(errno));
	const char file_text[] = "hello in a file";
	if (write(f, file_text, sizeof(file_text)) != (ssize_t)sizeof(file_text) || lseek(f, 0, SEEK_SET) != 0)
		fail("file", "write: %s", strerror(errno));
	want = strlen(file_text) + 1;
	n = read(f, scratch, RUNTIME(want * 2)); /* __read_chk; reads to end of file */
	if (n != (ssize_t)want || memcmp(scratch, file_text, want) != 0)
		fail("file", "read returned %zd", n);
	close(f);
	ok("regular file");

	struct sadb_msg *m = recv_msg(pfkey, "other-fds");
	expect_reply(m, "other-fds", SADB_REGISTER, 99);
	ok("pfkey reply read after the other descriptors");
}

/* SOCK_NONBLOCK and SOCK_CLOEXEC in socket()'s type are honoured on the redirected socket. */
static void step_socket_flags(void)
{
	int k = socket(PF_KEY, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, PF_KEY_V2);
	if (k < 0)
		fail("socket-flags", "socket: %s", strerror(errno));
	int fl = fcntl(k, F_GETFL), fd_fl = fcntl(k, F_GETFD);
	if (fl < 0 || !(fl & O_NONBLOCK) || fd_fl < 0 || !(fd_fl & FD_CLOEXEC))
		fail("socket-flags", "flags %#x, descriptor flags %#x", fl, fd_fl);
	close(k);
	k = open_pfkey();
	fl = fcntl(k, F_GETFL);
	fd_fl = fcntl(k, F_GETFD);
	if (fl < 0 || (fl & O_NONBLOCK) || fd_fl < 0 || (fd_fl & FD_CLOEXEC))
		fail("socket-flags", "plain socket: flags %#x, descriptor flags %#x", fl, fd_fl);
	close(k);
	ok("socket-flags SOCK_NONBLOCK and SOCK_CLOEXEC honoured");
}

/* A PF_KEY descriptor closed behind the bridge's back (dup2 onto its number) and
 * its number reused: a pipe and a UDP socket there must behave as themselves. */
static void step_reused_numbers(int udp)
{
	int p[2];
	if (pipe(p) != 0)
		fail("reused-pipe", "%s", strerror(errno));
	int k = open_pfkey();
	if (dup2(p[1], k) != k)
		fail("reused-pipe", "dup2: %s", strerror(errno));
	const char text[] = "a pipe where a PF_KEY socket was";
	ssize_t n = write(k, text, sizeof(text));
	if (n != (ssize_t)sizeof(text))
		fail("reused-pipe", "write returned %zd: %s", n, strerror(errno));
	n = read(p[0], scratch, RUNTIME(sizeof(text)));
	if (n != (ssize_t)sizeof(text) || memcmp(scratch, text, sizeof(text)) != 0)
		fail("reused-pipe", "read returned %zd", n);
	close(k);
	close(p[0]);
	close(p[1]);
	ok("reused-pipe");

	struct sockaddr_in self;
	socklen_t slen = sizeof(self);
	if (getsockname(udp, (struct sockaddr *)&self, &slen) != 0)
		fail("reused-udp", "getsockname: %s", strerror(errno));
	int u = socket(AF_INET, SOCK_DGRAM, 0);
	k = open_pfkey();
	if (u < 0 || dup2(u, k) != k)
		fail("reused-udp", "socket/dup2: %s", strerror(errno));
	close(u);
	const char dgram[] = "a datagram from a reused number";
	n = sendto(k, dgram, sizeof(dgram), 0, (struct sockaddr *)&self, slen);
	if (n != (ssize_t)sizeof(dgram))
		fail("reused-udp", "sendto returned %zd: %s", n, strerror(errno));
	n = recv(udp, scratch, RUNTIME(sizeof(scratch)), 0);
	if (n != (ssize_t)sizeof(dgram) || memcmp(scratch, dgram, sizeof(dgram)) != 0)
		fail("reused-udp", "recv returned %zd", n);
	close(k);
	ok("reused-udp");
}

/* The daemon is gone: every way of sending fails with an error, and no SIGPIPE. */
static void step_dead_daemon(int fd)
{
	struct builder b;
	b_init(&b, SADB_FLUSH, SADB_SATYPE_UNSPEC, 0);
	const unsigned char *msg = b_done(&b);

	ssize_t n = send(fd, msg, b.len, 0);
	int err = errno;
	if (n != -1 || (err != EPIPE && err != ECONNRESET && err != ENOTCONN))
		fail("dead-send", "send returned %zd: %s", n, strerror(err));
	ok("dead-send %s", strerrorname_np(err));

	n = write(fd, msg, b.len);
	err = errno;
	if (n != -1 || (err != EPIPE && err != ECONNRESET && err != ENOTCONN))
		fail("dead-write", "write returned %zd: %s", n, strerror(err));
	ok("dead-write %s", strerrorname_np(err));

	struct iovec iov = {.iov_base = (void *)msg, .iov_len = b.len};
	struct msghdr mh;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	n = sendmsg(fd, &mh, 0);
	err = errno;
	if (n != -1 || (err != EPIPE && err != ECONNRESET && err != ENOTCONN))
		fail("dead-sendmsg", "sendmsg returned %zd: %s", n, strerror(err));
	ok("dead-sendmsg %s", strerrorname_np(err));

	n = sendto(fd, msg, b.len, 0, NULL, 0);
	err = errno;
	if (n != -1 || (err != EPIPE && err != ECONNRESET && err != ENOTCONN))
		fail("dead-sendto", "sendto returned %zd: %s", n, strerror(err));
	ok("dead-sendto %s", strerrorname_np(err));

	/* A kernel PF_KEY socket never reads end of file.  Drain as strongSwan's charon
	 * does, recv(MSG_DONTWAIT) until it returns less than 0: messages still queued
	 * come first, then an error, never a 0 (on which charon spins). */
	int drained = 0;
	for (;;) {
		n = recv(fd, rbuf, RUNTIME(sizeof(rbuf)), MSG_DONTWAIT); /* __recv_chk */
		if (n < 0)
			break;
		if (n == 0 || ++drained > 1000)
			fail("dead-drain", "recv returned %zd after %d messages instead of an error", n, drained);
	}
	err = errno;
	if (err != ECONNRESET)
		fail("dead-drain", "recv failed with %s, expected ECONNRESET", strerrorname_np(err));
	ok("dead-drain %s after %d queued", strerrorname_np(err), drained);

	/* Every way of reading, blocking or not, fails the same way, and keeps failing. */
	n = recv(fd, rbuf, sizeof(struct sadb_msg), 0);
	err = errno;
	if (n != -1 || err != ECONNRESET)
		fail("dead-recv", "recv returned %zd: %s", n, strerror(err));
	ok("dead-recv %s", strerrorname_np(err));

	n = recv(fd, rbuf, RUNTIME(sizeof(struct sadb_msg)), MSG_PEEK | MSG_DONTWAIT);
	err = errno;
	if (n != -1 || err != ECONNRESET)
		fail("dead-peek", "recv(MSG_PEEK) returned %zd: %s", n, strerror(err));
	ok("dead-peek %s", strerrorname_np(err));

	n = recvfrom(fd, rbuf, RUNTIME(sizeof(rbuf)), MSG_DONTWAIT, NULL, NULL); /* __recvfrom_chk */
	err = errno;
	if (n != -1 || err != ECONNRESET)
		fail("dead-recvfrom", "recvfrom returned %zd: %s", n, strerror(err));
	ok("dead-recvfrom %s", strerrorname_np(err));

	n = read(fd, rbuf, RUNTIME(sizeof(rbuf))); /* __read_chk */
	err = errno;
	if (n != -1 || err != ECONNRESET)
		fail("dead-read", "read returned %zd: %s", n, strerror(err));
	ok("dead-read %s", strerrorname_np(err));

	struct iovec riov = {.iov_base = rbuf, .iov_len = sizeof(rbuf)};
	struct msghdr rmh;
	memset(&rmh, 0, sizeof(rmh));
	rmh.msg_iov = &riov;
	rmh.msg_iovlen = 1;
	n = recvmsg(fd, &rmh, MSG_DONTWAIT);
	err = errno;
	if (n != -1 || err != ECONNRESET)
		fail("dead-recvmsg", "recvmsg returned %zd: %s", n, strerror(err));
	ok("dead-recvmsg %s", strerrorname_np(err));

	n = recv(fd, rbuf, 0, MSG_DONTWAIT); /* an empty buffer: a peek tells end of file */
	err = errno;
	if (n != -1 || err != ECONNRESET)
		fail("dead-recv-empty", "recv into 0 bytes returned %zd: %s", n, strerror(err));
	ok("dead-recv-empty %s", strerrorname_np(err));
}

static int main_session(const char *path)
{
	for (size_t i = 0; i < sizeof(auth_key); i++)
		auth_key[i] = (unsigned char)(0xa0 + i);
	int fd = open_pfkey();
	struct timeval tv = {.tv_sec = 5}; /* setkey sets SO_RCVTIMEO too; here it bounds a hang */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0)
		fail("socket", "SO_RCVTIMEO: %s", strerror(errno));
	ok("socket fd=%d", fd);
	int udp = socket(AF_INET, SOCK_DGRAM, 0);
	if (udp < 0)
		fail("udp", "socket: %s", strerror(errno));

	step_register(fd);
	step_add_get(fd);
	step_dump(fd);
	step_spdadd(fd);
	step_socket_policy(udp);
	step_other_fds(fd, udp, path);
	step_reused_numbers(udp);
	step_socket_flags();

	printf("READY\n");
	fflush(stdout);
	char line[64];
	if (fgets(line, sizeof(line), stdin) == NULL)
		fail("ready", "stdin closed");
	step_dead_daemon(fd);
	close(udp);
	close(fd);
	ok("survived");
	return 0;
}

static int main_peek(void)
{
	int fd = open_pfkey();
	set_nonblocking(fd, 1);
	struct builder b;
	b_init(&b, SADB_REGISTER, SADB_SATYPE_ESP, 5);
	send_msg(fd, "peek", &b);
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	ssize_t n = recv(fd, rbuf, RUNTIME(sizeof(struct sadb_msg)), MSG_PEEK | MSG_DONTWAIT); /* __recv_chk */
	int err = errno;
	double ms = elapsed_ms(&start);
	const struct sadb_msg *hdr = (const struct sadb_msg *)rbuf;
	if (n == (ssize_t)sizeof(*hdr) && hdr->sadb_msg_type == SADB_REGISTER && hdr->sadb_msg_seq == 5) {
		printf("peek ok after %.0f ms\n", ms);
		return 0;
	}
	if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
		printf("peek EAGAIN after %.0f ms\n", ms);
		return 3;
	}
	printf("FAIL peek: returned %zd: %s\n", n, strerror(err));
	return 1;
}

static int main_open(void)
{
	int fd = socket(PF_KEY, SOCK_RAW, PF_KEY_V2);
	if (fd < 0) {
		printf("socket -1 %s\n", strerrorname_np(errno));
		return 0;
	}
	printf("socket %d\n", fd);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 3 && strcmp(argv[1], "session") == 0)
		return main_session(argv[2]);
	if (argc == 2 && strcmp(argv[1], "peek") == 0)
		return main_peek();
	if (argc == 2 && strcmp(argv[1], "open") == 0)
		return main_open();
	fprintf(stderr, "usage: pfkey_client session FILE | peek | open\n");
	return 64;
}
