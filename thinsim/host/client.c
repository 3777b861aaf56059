/* A simulated command on thinsim's simulated host: a client of the host's process
 * (thinsim/host/server.py), which runs the command and says how it ends.
 *
 * It sends its name (argv[0]'s last part), argv, environment and umask, with its working
 * folder and its standard streams as descriptors (SCM_RIGHTS), and then:
 *   E<status>  exits with the status;
 *   S<signal>  dies of the signal, as the real tool does (thin_ls | head -n1: SIGPIPE);
 *   X<path>    execs the real command (not simulated, or dd of real files);
 * each after an A the process sends once it has taken the command (an A alone: it died
 * while it ran it, and the command ends with an error).
 * Where there is no process listening yet (the first command, or after kill -9, or an idle
 * stop), it execs the Python shim, $THINSIM_SHIMS/.py/NAME, which starts one.  A compiled
 * client starts in a millisecond where Python takes 40 ms and more.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

static void fallback(const char *name, char **argv)
{
	const char *shims = getenv("THINSIM_SHIMS");
	char path[4096];
	if (shims == NULL) {
		fprintf(stderr, "thinsim: %s: THINSIM_SHIMS is not set\n", name);
		exit(1);
	}
	snprintf(path, sizeof path, "%s/.py/%s", shims, name);
	execv(path, argv);
	fprintf(stderr, "thinsim: %s: %s: %s\n", name, path, strerror(errno));
	exit(1);
}

static void put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
	if (*len + n + 1 > *cap) {
		*cap = (*len + n + 1) * 2;
		*buf = realloc(*buf, *cap);
		if (*buf == NULL) {
			perror("thinsim");
			exit(1);
		}
	}
	memcpy(*buf + *len, s, n);
	*len += n;
}

int main(int argc, char **argv)
{
	const char *name = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	const char *host = getenv("THINSIM_HOST");
	if (host == NULL) {
		fprintf(stderr, "thinsim: %s: THINSIM_HOST is not set\n", name);
		return 1;
	}
	/* which standard streams the command has; a closed one is held by a placeholder
	 * (close-on-exec: the shim finds it closed again) until the command is sent, so that
	 * the descriptors opened here do not take its number and pass for it (thin_dump >&-
	 * would get the socket or the working folder as its stdout) */
	uint32_t mask = 0;
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			mask |= 1u << fd;
		else
			open("/dev/null", O_PATH | O_CLOEXEC); /* the lowest free number: fd */
	}
	int dirfd = open(host, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		fallback(name, argv);
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/server.sock", dirfd);
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
		fallback(name, argv);
	close(dirfd);

	char *buf = NULL;
	size_t len = 12, cap = 0; /* room for the header */
	char num[32];
	put(&buf, &len, &cap, "", 0);
	len = 12;
	put(&buf, &len, &cap, name, strlen(name));
	put(&buf, &len, &cap, "", 1);
	snprintf(num, sizeof num, "%d", argc - 1);
	put(&buf, &len, &cap, num, strlen(num));
	for (int i = 1; i < argc; i++) {
		put(&buf, &len, &cap, "", 1);
		put(&buf, &len, &cap, argv[i], strlen(argv[i]));
	}
	for (char **e = environ; *e; e++) {
		put(&buf, &len, &cap, "", 1);
		put(&buf, &len, &cap, *e, strlen(*e));
	}
	int fds[4], nfds = 0;
	fds[nfds++] = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fds[0] < 0)
		fallback(name, argv);
	for (int fd = 0; fd < 3; fd++)
		if (mask & (1u << fd))
			fds[nfds++] = fd;
	mode_t um = umask(0);
	umask(um);
	uint32_t head[3] = {(uint32_t)(len - 12), mask, (uint32_t)um};
	memcpy(buf, head, 12); /* little-endian, as the server reads it (<III) */

	char control[CMSG_SPACE(sizeof fds)];
	memset(control, 0, sizeof control);
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			     .msg_controllen = CMSG_SPACE(nfds * sizeof(int))};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
	memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	if (n < 0)
		fallback(name, argv);
	size_t sent = n;
	while (sent < len) {
		n = send(sock, buf + sent, len - sent, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		sent += n;
	}
	close(fds[0]);
	free(buf);

	char answer[4200];
	size_t got = 0;
	while (got < sizeof answer - 1) {
		n = read(sock, answer + got, sizeof answer - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += n;
	}
	answer[got] = '\0';
	if (got == 1 && answer[0] == 'A') {
		/* the process took the command, then died (kill -9) while it ran: the
		 * command ends with it and is not run again (its input may be read, its
		 * output written); the next command starts a new process */
		fprintf(stderr, "thinsim: %s: the host's process died while it ran the command; "
				"the host goes on from what it had committed\n", name);
		return 1;
	}
	if (got > 1 && answer[0] == 'A')
		memmove(answer, answer + 1, got--);
	if (got > 1 && answer[0] == 'E')
		return atoi(answer + 1);
	if (got > 1 && answer[0] == 'S') {
		int sig = atoi(answer + 1);
		sigset_t set;
		signal(sig, SIG_DFL);
		sigemptyset(&set);
		sigaddset(&set, sig);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		raise(sig);
		return 128 + sig;
	}
	if (got > 1 && answer[0] == 'X') {
		argv[0] = (char *)name;
		execv(answer + 1, argv);
		fprintf(stderr, "%s: %s\n", name, strerror(errno));
		return 127;
	}
	/* no answer: the process died before it took the command (killed, or it could not
	 * start in a full host folder): the Python shim runs the command on the host state's
	 * file, as before there was one */
	setenv("THINSIM_SERVER", "0", 1);
	fallback(name, argv);
	return 1;
}
