/*
 * send_spy.c - a test-only interposer placed after the pfkeyd bridge in
 * LD_PRELOAD ("bridge.so spy.so"): the bridge's dlsym(RTLD_NEXT, "send") then
 * finds these functions, which log the flags every send carries to stderr and
 * pass the call on.  On a SOCK_SEQPACKET socket Linux raises no SIGPIPE whatever
 * the flags, so the log is how the tests see that the bridge adds MSG_NOSIGNAL.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

static void note(const char *call, int fd, int flags)
{
	char line[96];
	int n = snprintf(line, sizeof(line), "spy %s fd=%d flags=%#x\n", call, fd, (unsigned)flags);
	if (n > 0) {
		ssize_t ignored = write(STDERR_FILENO, line, (size_t)n);
		(void)ignored;
	}
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	static ssize_t (*real)(int, const void *, size_t, int);
	if (real == NULL)
		real = (ssize_t(*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
	note("send", fd, flags);
	return real(fd, buf, len, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen)
{
	static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
	if (real == NULL)
		real = (ssize_t(*)(int, const void *, size_t, int, const struct sockaddr *, socklen_t))dlsym(
			RTLD_NEXT, "sendto");
	note("sendto", fd, flags);
	return real(fd, buf, len, flags, to, tolen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	static ssize_t (*real)(int, const struct msghdr *, int);
	if (real == NULL)
		real = (ssize_t(*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
	note("sendmsg", fd, flags);
	return real(fd, msg, flags);
}
