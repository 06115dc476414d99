#define _GNU_SOURCE
// seqget: GET a path N times, one after another, on one keep-alive HTTP/1.1 connection (TCP or a Unix socket),
// checking each answer is 200; prints nothing on success. The sequential client of scripts/bench/footprint (which
// builds it with clang): it costs little CPU of its own, so the daemon's CPU per request is what the two cores measure.
//   seqget tcp HOST PORT PATH N [TOKEN] | seqget unix SOCKET PATH N [TOKEN]
//   seqget ready HOST PORT SECONDS: polls GET /readyz every millisecond until it answers 200 (exit 0) or SECONDS pass
//   (exit 1): a start can be timed without a process per poll taking the CPUs the daemon starts on.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static char buf[1 << 20];
static size_t have, at;

static void die(const char *what) { fprintf(stderr, "seqget: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : ""); exit(1); }

static void fill(int fd) {
  if (at > 0) { memmove(buf, buf + at, have - at); have -= at; at = 0; }
  if (have == sizeof buf) { errno = 0; die("answer too large"); }
  ssize_t n = read(fd, buf + have, sizeof buf - have);
  if (n <= 0) { if (n == 0) errno = 0; die("connection closed"); }
  have += (size_t)n;
}

// The next CRLF-terminated line, without its CRLF.
static char *line(int fd) {
  for (;;) {
    char *end = memmem(buf + at, have - at, "\r\n", 2);
    if (end) { *end = 0; char *l = buf + at; at = (size_t)(end - buf) + 2; return l; }
    fill(fd);
  }
}

static void skip(int fd, size_t n) {
  while (n > 0) {
    if (at == have) fill(fd);
    size_t take = have - at < n ? have - at : n;
    at += take; n -= take;
  }
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

// One GET /readyz on a new connection: 1 when it answers 200.
static int ready_once(struct sockaddr_in *sa) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), ok = 0;
  if (fd < 0) return 0;
  if (connect(fd, (struct sockaddr *)sa, sizeof *sa) == 0) {
    static const char request[] = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    char answer[64] = "";
    if (write(fd, request, sizeof request - 1) == (ssize_t)(sizeof request - 1) && read(fd, answer, sizeof answer - 1) > 12)
      ok = strncmp(answer, "HTTP/1.1 200", 12) == 0;
  }
  close(fd);
  return ok;
}

static int wait_ready(const char *host, const char *port, const char *seconds) {
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port)) };
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) die("bad address");
  double deadline = now() + atof(seconds);
  struct timespec ms = { 0, 1000000 };
  while (!ready_once(&sa)) {
    if (now() > deadline) { errno = 0; fprintf(stderr, "seqget: not ready within %s s\n", seconds); return 1; }
    nanosleep(&ms, NULL);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "ready") == 0) return wait_ready(argv[2], argv[3], argv[4]);
  if (argc < 5) { fprintf(stderr, "usage: seqget tcp HOST PORT PATH N [TOKEN] | seqget unix SOCKET PATH N [TOKEN]\n"); return 2; }
  int tcp = strcmp(argv[1], "tcp") == 0, a = tcp ? 4 : 3;
  const char *path = argv[a];
  long n = atol(argv[a + 1]);
  const char *token = argc > a + 2 && argv[a + 2][0] ? argv[a + 2] : NULL;
  int fd;
  if (tcp) {
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3])) };
    if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) die("bad address");
    if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  } else {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strncpy(sa.sun_path, argv[2], sizeof sa.sun_path - 1);
    if ((fd = socket(AF_UNIX, SOCK_STREAM, 0)) < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
  }
  char request[4096];
  int len = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: localhost\r\n%s%s%s\r\n", path,
                     token ? "Authorization: Bearer " : "", token ? token : "", token ? "\r\n" : "");
  for (long i = 0; i < n; i++) {
    if (write(fd, request, (size_t)len) != len) die("write");
    char *status = line(fd);
    if (strncmp(status, "HTTP/1.1 200", 12) != 0) { errno = 0; fprintf(stderr, "seqget: GET %s: %s\n", path, status); return 1; }
    long length = -1;
    int chunked = 0;
    for (char *h; *(h = line(fd));) {
      if (strncasecmp(h, "content-length:", 15) == 0) length = atol(h + 15);
      else if (strncasecmp(h, "transfer-encoding:", 18) == 0 && strstr(h, "chunked")) chunked = 1;
    }
    if (chunked) {
      for (;;) {
        long size = strtol(line(fd), NULL, 16);
        skip(fd, (size_t)size);
        line(fd);
        if (size == 0) break;
      }
    } else if (length >= 0) {
      skip(fd, (size_t)length);
    } else { errno = 0; die("an answer with neither Content-Length nor chunked encoding"); }
  }
  return 0;
}
