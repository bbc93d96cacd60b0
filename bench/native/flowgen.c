/*
 * flowgen: many UDP flows from few sockets, for driving flowlb with up to millions of active flows.
 *
 * Flow i is the 4-tuple (127.B.C.D : port(i % S)) -> target, where S is --sockets and B.C.D is derived from
 * i / S (last octet 1..254, second octet from --addr-base up). Every socket is bound to 0.0.0.0:<port>, and
 * each datagram carries an IP_PKTINFO control message whose ipi_spec_dst is the flow's source address, so
 * the kernel sends it from 127.B.C.D (all of 127.0.0.0/8 is local on lo). Replies to 127.B.C.D:<port> land
 * on the same wildcard-bound socket. Sends use sendmmsg, receives recvmmsg (non-blocking, batches of 64).
 *
 * Wire format: flowlb's probe header (src/gen/packet.ts), 24 bytes network order at offset 0:
 *   magic "FLP1", runId, flowId, per-flow seq (from 0), send time (CLOCK_MONOTONIC ns); zero filler after.
 *
 * Phases: optional warm-up (one packet to every flow that has no reply yet, paced at --warmup-rate, up to
 * --warmup-passes passes, each followed by a short drain; then --warmup-pause-ms idle, so a caller can look
 * at the target with all flows in place), then the measured phase: round robin over all
 * flows (flow k % N), paced to --rate pps on a fixed schedule (0 or "max" = as fast as it can; paced sends
 * go in bursts at most every --tick-us, default 100 us, catching up with the schedule), until --duration
 * seconds or --count packets, whichever comes first; then a drain of --drain-ms for late replies.
 * It always stops by itself: the measured phase is bounded by duration (default 5 s when neither is given;
 * with --count alone, twice the count's scheduled time + 60 s) and the warm-up by its pass count.
 *
 * Accounting, per flow (arrays sized at start): next seq to send, highest seq received + 1, and a 64-bit
 * bitmap of the last 64 seqs received. received = distinct seqs back; duplicated = a seq already seen;
 * reordered = first arrival of a seq lower than the highest already seen; a reply more than 64 seqs behind
 * the highest is counted in lateBeyondWindow (reordered or duplicated, not told apart); lost = sent -
 * received after the drain. RTT: a log-linear histogram (32 sub-buckets per power of two of nanoseconds,
 * so a bucket is at most 1/32 = 3.1% wide; a percentile is reported as its bucket's midpoint).
 *
 * stdout: one JSON object at the end. stderr: one JSON line per event ({"event":"measure",...}) and, with
 * --progress-ms, progress lines, so a caller can time its own snapshots.
 *
 * Other modes (the generator's own ceiling): --sink HOST:PORT counts datagrams; --echo HOST:PORT sends each
 * datagram back to its source. Both stop after --duration seconds and print one JSON object.
 *
 * Build: cc -O2 -Wall -o flowgen flowgen.c     (Linux only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SOCKETS 64
#define MAX_PAYLOAD 2048
#define PROBE_MAGIC 0x464C5031u
#define HDR_BYTES 24

static void die(const char *what) {
  fprintf(stderr, "flowgen: %s: %s\n", what, strerror(errno));
  exit(2);
}
static void usage_die(const char *msg) {
  fprintf(stderr, "flowgen: %s (see the comment at the top of flowgen.c)\n", msg);
  exit(2);
}

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void put32(uint8_t *p, uint32_t v) { v = htonl(v); memcpy(p, &v, 4); }
static inline uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return ntohl(v); }
static inline void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static inline uint64_t get64(const uint8_t *p) { return ((uint64_t)get32(p) << 32) | get32(p + 4); }

/* ---------------------------------------------------------------------------------------------------- */
/* Log-linear histogram of nanoseconds: values < 64 exact; above, 32 sub-buckets per power of two.        */

#define HIST_BUCKETS (64 + 58 * 32)
static uint64_t hist[HIST_BUCKETS];
static uint64_t hist_count, hist_min = UINT64_MAX, hist_max;
static double hist_sum;

static inline int hist_index(uint64_t v) {
  if (v < 64) return (int)v;
  int m = 63 - __builtin_clzll(v); /* >= 6 */
  int shift = m - 5;               /* v >> shift in [32, 63] */
  return 64 + (m - 6) * 32 + (int)((v >> shift) - 32);
}
static uint64_t hist_mid(int i) {
  if (i < 64) return (uint64_t)i;
  int m = (i - 64) / 32 + 6, sub = (i - 64) % 32, shift = m - 5;
  uint64_t lo = (uint64_t)(32 + sub) << shift;
  return lo + ((1ull << shift) >> 1);
}
static inline void hist_add(uint64_t v) {
  hist[hist_index(v)]++;
  hist_count++;
  hist_sum += (double)v;
  if (v < hist_min) hist_min = v;
  if (v > hist_max) hist_max = v;
}
static uint64_t hist_pct(double p) {
  if (hist_count == 0) return 0;
  uint64_t want = (uint64_t)((p / 100.0) * (double)hist_count + 0.5);
  if (want < 1) want = 1;
  uint64_t seen = 0;
  for (int i = 0; i < HIST_BUCKETS; i++) {
    seen += hist[i];
    if (seen >= want) {
      uint64_t v = hist_mid(i);
      return v > hist_max ? hist_max : v < hist_min ? hist_min : v;
    }
  }
  return hist_max;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Options.                                                                                               */

static struct {
  struct sockaddr_in target;
  uint32_t flows;
  double rate;          /* pps, 0 = max */
  double duration;      /* s */
  uint64_t count;       /* packets in the measured phase, 0 = unbounded (duration decides) */
  int size;
  int warmup;
  double warmup_rate;
  int warmup_passes;
  int warmup_drain_ms;
  int warmup_pause_ms;  /* idle time between the warm-up and the measured phase (replies still read) */
  int drain_ms;
  int sockets;
  int port_base;        /* 0: ports chosen by the kernel */
  int addr_base;        /* second octet of the first source address */
  int progress_ms;
  int rcvbuf;
  int tick_us;          /* shortest pause between paced bursts */
  uint32_t run_id;
  int mode;             /* 0 gen, 1 sink, 2 echo */
  struct sockaddr_in listen;
} opt;

static int parse_addr(const char *s, struct sockaddr_in *sa) {
  char host[64];
  const char *colon = strrchr(s, ':');
  if (!colon || colon - s >= (long)sizeof host) return -1;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = 0;
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) return -1;
  long port = strtol(colon + 1, NULL, 10);
  if (port < 0 || port > 65535) return -1;
  sa->sin_port = htons((uint16_t)port);
  return 0;
}

static double num_arg(int argc, char **argv, int *i) {
  if (*i + 1 >= argc) usage_die("missing value");
  char *end;
  const char *s = argv[++*i];
  double v = strcmp(s, "max") == 0 ? 0 : strtod(s, &end);
  if (strcmp(s, "max") != 0 && (*end != 0 || v < 0)) usage_die("bad number");
  return v;
}

static void parse(int argc, char **argv) {
  opt.flows = 1000; opt.rate = 10000; opt.duration = -1; opt.size = 64; opt.warmup_rate = 20000;
  opt.warmup_passes = 3; opt.warmup_drain_ms = 300; opt.drain_ms = 500; opt.sockets = 1; opt.addr_base = 64;
  opt.rcvbuf = 8 << 20; opt.tick_us = 100;
  int have_target = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--target") || !strcmp(a, "--sink") || !strcmp(a, "--echo")) {
      if (i + 1 >= argc) usage_die("missing address");
      struct sockaddr_in *sa = !strcmp(a, "--target") ? &opt.target : &opt.listen;
      if (parse_addr(argv[++i], sa)) usage_die("bad address (want IPv4:PORT)");
      if (!strcmp(a, "--sink")) opt.mode = 1; else if (!strcmp(a, "--echo")) opt.mode = 2; else have_target = 1;
    }
    else if (!strcmp(a, "--flows")) opt.flows = (uint32_t)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--rate")) opt.rate = num_arg(argc, argv, &i);
    else if (!strcmp(a, "--duration")) opt.duration = num_arg(argc, argv, &i);
    else if (!strcmp(a, "--count")) opt.count = (uint64_t)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--size")) opt.size = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--warmup")) opt.warmup = 1;
    else if (!strcmp(a, "--warmup-rate")) opt.warmup_rate = num_arg(argc, argv, &i);
    else if (!strcmp(a, "--warmup-passes")) opt.warmup_passes = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--warmup-drain-ms")) opt.warmup_drain_ms = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--warmup-pause-ms")) opt.warmup_pause_ms = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--drain-ms")) opt.drain_ms = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--sockets")) opt.sockets = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--port-base")) opt.port_base = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--addr-base")) opt.addr_base = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--progress-ms")) opt.progress_ms = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--rcvbuf")) opt.rcvbuf = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--tick-us")) opt.tick_us = (int)num_arg(argc, argv, &i);
    else if (!strcmp(a, "--help") || !strcmp(a, "-h")) usage_die("usage");
    else { fprintf(stderr, "flowgen: unknown option %s\n", a); exit(2); }
  }
  if (opt.mode == 0 && !have_target) usage_die("--target IPv4:PORT is required");
  if (opt.duration < 0 && opt.count == 0) opt.duration = 5;
  /* --count alone: still a time bound, twice the scheduled time plus a minute (a minute at "max"). */
  if (opt.duration < 0) opt.duration = (opt.rate > 0 ? 2.0 * (double)opt.count / opt.rate : 0) + 60;
  if (opt.mode != 0 && opt.duration <= 0) opt.duration = 5;
  if (opt.flows < 1) usage_die("--flows must be >= 1");
  if (opt.size < HDR_BYTES || opt.size > MAX_PAYLOAD) usage_die("--size must be 24..2048");
  if (opt.sockets < 1 || opt.sockets > MAX_SOCKETS) usage_die("--sockets must be 1..64");
  if (opt.warmup_rate <= 0) opt.warmup_rate = 20000;
  if (opt.addr_base < 1 || opt.addr_base > 254) usage_die("--addr-base must be 1..254");
  /* Addresses per socket: 254 per /24, 65536 /24s per second octet... capped by what 127/8 holds above addr_base. */
  uint64_t per_sock = ((uint64_t)opt.flows + (uint64_t)opt.sockets - 1) / (uint64_t)opt.sockets;
  uint64_t room = (uint64_t)(255 - opt.addr_base) * 256 * 254;
  if (per_sock > room) usage_die("too many flows for the source address space (raise --sockets or lower --addr-base)");
  if (opt.port_base && opt.port_base + opt.sockets > 65536) usage_die("--port-base too high");
  opt.run_id = (uint32_t)(now_ns() ^ ((uint64_t)getpid() << 16)) & 0x7fffffffu;
}

/* Source address of flow i (network order): index a = i / sockets -> 127.(base + a / 65024).(a / 254 % 256).(a % 254 + 1). */
static inline uint32_t flow_addr(uint32_t i) {
  uint32_t a = i / (uint32_t)opt.sockets;
  uint32_t b2 = (uint32_t)opt.addr_base + a / (256 * 254), b3 = (a / 254) % 256, b4 = a % 254 + 1;
  return htonl((127u << 24) | (b2 << 16) | (b3 << 8) | b4);
}

static int open_socket(const struct sockaddr_in *bind_to) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (fd < 0) die("socket");
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &opt.rcvbuf, sizeof opt.rcvbuf))
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &opt.rcvbuf, sizeof opt.rcvbuf); /* capped at rmem_max without CAP_NET_ADMIN */
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &opt.rcvbuf, sizeof opt.rcvbuf))
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &opt.rcvbuf, sizeof opt.rcvbuf);
  if (bind(fd, (const struct sockaddr *)bind_to, sizeof *bind_to)) die("bind");
  return fd;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Sink and echo: the generator's own ceiling.                                                            */

static int sink_or_echo(void) {
  int fd = open_socket(&opt.listen);
  struct sockaddr_in bound; socklen_t bl = sizeof bound;
  getsockname(fd, (struct sockaddr *)&bound, &bl);
  fprintf(stderr, "{\"event\":\"listening\",\"port\":%d}\n", ntohs(bound.sin_port));
  static uint8_t bufs[BATCH][MAX_PAYLOAD];
  static struct iovec iov[BATCH];
  static struct sockaddr_in from[BATCH];
  static struct mmsghdr msgs[BATCH];
  uint64_t packets = 0, bytes = 0, echoed = 0, send_fail = 0;
  uint64_t first = 0, last = 0;
  double cpu0 = cpu_seconds();
  uint64_t end = now_ns() + (uint64_t)(opt.duration * 1e9);
  struct pollfd pfd = { .fd = fd, .events = POLLIN };
  for (;;) {
    uint64_t t = now_ns();
    if (t >= end) break;
    int ms = (int)((end - t) / 1000000) + 1;
    if (poll(&pfd, 1, ms > 100 ? 100 : ms) <= 0) continue;
    for (;;) {
      for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i]; iov[i].iov_len = MAX_PAYLOAD;
        memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
        msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i]; msgs[i].msg_hdr.msg_namelen = sizeof from[i];
      }
      int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
      if (n <= 0) break;
      if (!first) first = now_ns();
      last = now_ns();
      packets += (uint64_t)n;
      for (int i = 0; i < n; i++) { bytes += msgs[i].msg_len; iov[i].iov_len = msgs[i].msg_len; }
      if (opt.mode == 2) {
        int off = 0;
        while (off < n) {
          int s = sendmmsg(fd, msgs + off, (unsigned)(n - off), MSG_DONTWAIT);
          if (s <= 0) { send_fail += (uint64_t)(n - off); break; }
          off += s; echoed += (uint64_t)s;
        }
      }
    }
  }
  double secs = last > first ? (double)(last - first) / 1e9 : 0;
  printf("{\"mode\":\"%s\",\"port\":%d,\"packets\":%llu,\"bytes\":%llu,\"echoed\":%llu,\"echoFailed\":%llu,"
         "\"activeSeconds\":%.6f,\"pps\":%.1f,\"cpuSeconds\":%.4f}\n",
         opt.mode == 1 ? "sink" : "echo", ntohs(bound.sin_port), (unsigned long long)packets, (unsigned long long)bytes,
         (unsigned long long)echoed, (unsigned long long)send_fail, secs, secs > 0 ? (double)packets / secs : 0,
         cpu_seconds() - cpu0);
  return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The generator.                                                                                         */

static int fds[MAX_SOCKETS];
static uint16_t ports[MAX_SOCKETS];
static uint32_t *next_seq;   /* per flow: next seq to send */
static uint32_t *high_seq;   /* per flow: highest seq received + 1 (0: none yet) */
static uint64_t *seen_bits;  /* per flow: bit k = seq (high_seq - 1 - k) received */
static uint32_t *recv_count; /* per flow: replies received (distinct, or late beyond the window) */
/* Warm-up packets carry runId | WARMUP_BIT (runId itself has the bit clear), so a reply says its phase. */
#define WARMUP_BIT 0x80000000u

/* Counters per phase: 0 warm-up, 1 measured. */
struct counts { uint64_t sent, received, reordered, duplicated, late, send_again; };
static struct counts cnt[2];
static uint64_t invalid;
static volatile sig_atomic_t stop_flag;
static void on_signal(int s) { (void)s; stop_flag = 1; }

/* Send state: one batch per socket being built. */
static uint8_t sbuf[MAX_SOCKETS][BATCH][MAX_PAYLOAD];
static char sctl[MAX_SOCKETS][BATCH][CMSG_SPACE(sizeof(struct in_pktinfo))];
static struct iovec siov[MAX_SOCKETS][BATCH];
static struct mmsghdr smsg[MAX_SOCKETS][BATCH];
static int sfill[MAX_SOCKETS];

static void init_send(void) {
  for (int s = 0; s < opt.sockets; s++)
    for (int i = 0; i < BATCH; i++) {
      uint8_t *b = sbuf[s][i];
      memset(b, 0, MAX_PAYLOAD);
      put32(b, PROBE_MAGIC);
      siov[s][i].iov_base = b; siov[s][i].iov_len = (size_t)opt.size;
      struct msghdr *h = &smsg[s][i].msg_hdr;
      memset(h, 0, sizeof *h);
      h->msg_name = &opt.target; h->msg_namelen = sizeof opt.target;
      h->msg_iov = &siov[s][i]; h->msg_iovlen = 1;
      h->msg_control = sctl[s][i]; h->msg_controllen = sizeof sctl[s][i];
      memset(sctl[s][i], 0, sizeof sctl[s][i]);
      struct cmsghdr *c = CMSG_FIRSTHDR(h);
      c->cmsg_level = IPPROTO_IP; c->cmsg_type = IP_PKTINFO; c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
    }
}

/* Flushes socket s's batch; returns packets the kernel took (the rest stay queued and go again later). */
static int flush(int s, int phase) {
  int off = 0;
  while (off < sfill[s]) {
    int n = sendmmsg(fds[s], smsg[s] + off, (unsigned)(sfill[s] - off), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) { cnt[phase].send_again++; break; }
      if (errno == EINTR) continue;
      die("sendmmsg");
    }
    off += n;
  }
  if (off > 0 && off < sfill[s]) {
    /* Keep the unsent tail at the front, in order (its seqs are already assigned). */
    for (int i = off; i < sfill[s]; i++) {
      memcpy(sbuf[s][i - off], sbuf[s][i], HDR_BYTES);
      memcpy(CMSG_DATA(CMSG_FIRSTHDR(&smsg[s][i - off].msg_hdr)), CMSG_DATA(CMSG_FIRSTHDR(&smsg[s][i].msg_hdr)), sizeof(struct in_pktinfo));
    }
  }
  sfill[s] -= off;
  cnt[phase].sent += (uint64_t)off;
  return off;
}

/* Queues one packet of flow f; sends the socket's batch when it is full. Returns 0 if the batch was full and could not be sent. */
static int queue_packet(uint32_t f, int phase) {
  int s = (int)(f % (uint32_t)opt.sockets);
  if (sfill[s] == BATCH && flush(s, phase) == 0) return 0;
  int i = sfill[s]++;
  uint8_t *b = sbuf[s][i];
  put32(b + 4, phase == 0 ? opt.run_id | WARMUP_BIT : opt.run_id);
  put32(b + 8, f);
  put32(b + 12, next_seq[f]++);
  put64(b + 16, now_ns());
  struct in_pktinfo *pi = (struct in_pktinfo *)CMSG_DATA(CMSG_FIRSTHDR(&smsg[s][i].msg_hdr));
  pi->ipi_ifindex = 0;
  pi->ipi_spec_dst.s_addr = flow_addr(f);
  pi->ipi_addr.s_addr = 0;
  return 1;
}

static void flush_all(int phase) {
  for (int s = 0; s < opt.sockets; s++) if (sfill[s]) flush(s, phase);
}
static int pending_sends(void) {
  int p = 0;
  for (int s = 0; s < opt.sockets; s++) p += sfill[s];
  return p;
}

static uint8_t rbuf[BATCH][MAX_PAYLOAD];
static struct iovec riov[BATCH];
static struct mmsghdr rmsg[BATCH];

static void account(const uint8_t *p, unsigned len, uint64_t t) {
  uint32_t rid = len >= HDR_BYTES ? get32(p + 4) : 0;
  if (len < HDR_BYTES || get32(p) != PROBE_MAGIC || (rid & 0x7fffffffu) != opt.run_id) { invalid++; return; }
  uint32_t f = get32(p + 8), seq = get32(p + 12);
  if (f >= opt.flows || seq >= next_seq[f]) { invalid++; return; }
  int phase = (rid & WARMUP_BIT) ? 0 : 1;
  struct counts *c = &cnt[phase];
  uint32_t hi = high_seq[f];
  if (hi == 0 || seq >= hi) {
    uint32_t shift = hi == 0 ? 64 : seq - hi + 1;
    seen_bits[f] = (shift >= 64 ? 0 : seen_bits[f] << shift) | 1;
    high_seq[f] = seq + 1;
  } else {
    uint32_t back = hi - 1 - seq;
    if (back >= 64) c->late++; /* reordered or duplicated: beyond the window, not told apart */
    else if (seen_bits[f] & (1ull << back)) { c->duplicated++; return; }
    else { seen_bits[f] |= 1ull << back; c->reordered++; }
  }
  c->received++;
  recv_count[f]++;
  if (phase == 1) {
    uint64_t sent_at = get64(p + 16);
    hist_add(t > sent_at ? t - sent_at : 0);
  }
}

/* Drains every socket's receive queue; returns datagrams read. */
static uint64_t drain_rx(void) {
  uint64_t total = 0;
  for (int s = 0; s < opt.sockets; s++) {
    for (;;) {
      for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = rbuf[i]; riov[i].iov_len = MAX_PAYLOAD;
        rmsg[i].msg_hdr.msg_iov = &riov[i]; rmsg[i].msg_hdr.msg_iovlen = 1;
        rmsg[i].msg_hdr.msg_name = NULL; rmsg[i].msg_hdr.msg_namelen = 0;
        rmsg[i].msg_hdr.msg_control = NULL; rmsg[i].msg_hdr.msg_controllen = 0;
      }
      int n = recvmmsg(fds[s], rmsg, BATCH, MSG_DONTWAIT, NULL);
      if (n <= 0) break;
      uint64_t t = now_ns();
      for (int i = 0; i < n; i++) account(rbuf[i], rmsg[i].msg_len, t);
      total += (uint64_t)n;
      if (n < BATCH) break;
    }
  }
  return total;
}

static inline uint64_t tick_ns(void) { return (uint64_t)opt.tick_us * 1000ull; }

static struct pollfd pfds[MAX_SOCKETS];
/* Waits for replies up to `ns` (or until one arrives), then drains. */
static void wait_rx(uint64_t ns) {
  struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull) };
  if (ppoll(pfds, (nfds_t)opt.sockets, &ts, NULL) > 0) drain_rx();
}

static void drain_for(uint64_t ns, uint64_t want_received_total) {
  uint64_t end = now_ns() + ns;
  for (;;) {
    drain_rx();
    if (cnt[0].received + cnt[1].received >= want_received_total) return;
    uint64_t t = now_ns();
    if (t >= end || stop_flag) return;
    wait_rx(end - t > 5000000 ? 5000000 : end - t);
  }
}

static uint64_t last_progress;
static void progress(const char *phase, uint64_t t, uint64_t t0) {
  if (opt.progress_ms <= 0 || t - last_progress < (uint64_t)opt.progress_ms * 1000000ull) return;
  last_progress = t;
  fprintf(stderr, "{\"event\":\"progress\",\"phase\":\"%s\",\"elapsedMs\":%.1f,\"sent\":%llu,\"received\":%llu}\n", phase,
          (double)(t - t0) / 1e6, (unsigned long long)(cnt[0].sent + cnt[1].sent), (unsigned long long)(cnt[0].received + cnt[1].received));
}

/* Sends one packet to each flow in `list` (n entries) at `rate` pps. */
static void paced_pass(const uint32_t *list, uint32_t n, double rate, int phase, const char *name) {
  uint64_t t0 = now_ns(), k = 0;
  while (k < n && !stop_flag) {
    uint64_t t = now_ns();
    uint64_t due = rate > 0 ? (uint64_t)((double)(t - t0) * rate / 1e9) + 1 : k + BATCH;
    if (due > n) due = n;
    while (k < due) {
      if (!queue_packet(list ? list[k] : (uint32_t)k, phase)) break;
      k++;
    }
    flush_all(phase);
    drain_rx();
    progress(name, t, t0);
    if (k >= due) {
      uint64_t next = rate > 0 ? t0 + (uint64_t)((double)k * 1e9 / rate) : 0;
      uint64_t t2 = now_ns();
      if (next > t2) wait_rx(next - t2 > tick_ns() ? next - t2 : tick_ns());
    } else {
      wait_rx(20000); /* send buffer full: give the receiver a moment */
    }
  }
  while (pending_sends() && !stop_flag) { flush_all(phase); drain_rx(); }
}

int main(int argc, char **argv) {
  parse(argc, argv);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE, SIG_IGN);
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  if (opt.mode != 0) return sink_or_echo();

  next_seq = calloc(opt.flows, sizeof *next_seq);
  high_seq = calloc(opt.flows, sizeof *high_seq);
  seen_bits = calloc(opt.flows, sizeof *seen_bits);
  recv_count = calloc(opt.flows, sizeof *recv_count);
  if (!next_seq || !high_seq || !seen_bits || !recv_count) die("calloc");
  for (int s = 0; s < opt.sockets; s++) {
    struct sockaddr_in any = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY),
                               .sin_port = htons((uint16_t)(opt.port_base ? opt.port_base + s : 0)) };
    fds[s] = open_socket(&any);
    struct sockaddr_in b; socklen_t bl = sizeof b;
    getsockname(fds[s], (struct sockaddr *)&b, &bl);
    ports[s] = ntohs(b.sin_port);
    pfds[s].fd = fds[s]; pfds[s].events = POLLIN;
  }
  init_send();
  double cpu0 = cpu_seconds();
  uint64_t start = now_ns();

  /* Warm-up: every flow without a reply gets one packet, up to warmup_passes passes. */
  int passes = 0;
  uint32_t warm_missing = 0;
  double warm_seconds = 0;
  if (opt.warmup) {
    uint32_t *list = malloc((size_t)opt.flows * sizeof *list);
    if (!list) die("malloc");
    uint32_t n = opt.flows;
    for (uint32_t i = 0; i < n; i++) list[i] = i;
    for (passes = 1; passes <= opt.warmup_passes && n > 0 && !stop_flag; passes++) {
      paced_pass(list, n, opt.warmup_rate, 0, "warmup");
      drain_for((uint64_t)opt.warmup_drain_ms * 1000000ull, cnt[0].sent);
      uint32_t m = 0;
      for (uint32_t i = 0; i < opt.flows; i++) if (high_seq[i] == 0) list[m++] = i;
      fprintf(stderr, "{\"event\":\"warmup-pass\",\"pass\":%d,\"sent\":%u,\"flowsWithoutReply\":%u}\n", passes, n, m);
      n = m;
    }
    passes--;
    warm_missing = n;
    free(list);
    warm_seconds = (double)(now_ns() - start) / 1e9;
    fprintf(stderr, "{\"event\":\"warmup-done\",\"seconds\":%.3f,\"flowsWithoutReply\":%u,\"pauseMs\":%d}\n", warm_seconds, warm_missing, opt.warmup_pause_ms);
    fflush(stderr);
    if (opt.warmup_pause_ms > 0) drain_for((uint64_t)opt.warmup_pause_ms * 1000000ull, UINT64_MAX);
  }

  /* Measured phase. */
  uint64_t t0 = now_ns();
  fprintf(stderr, "{\"event\":\"measure\",\"flows\":%u,\"warmupSeconds\":%.3f}\n", opt.flows, warm_seconds);
  fflush(stderr);
  double cpu1 = cpu_seconds();
  uint64_t end = opt.duration > 0 ? t0 + (uint64_t)(opt.duration * 1e9) : UINT64_MAX;
  uint64_t limit = opt.count ? opt.count : UINT64_MAX;
  uint64_t k = 0; /* packets queued in this phase; flow = k % flows */
  uint32_t f = 0;
  while (!stop_flag) {
    uint64_t t = now_ns();
    if (t >= end || k >= limit) break;
    uint64_t due = opt.rate > 0 ? (uint64_t)((double)(t - t0) * opt.rate / 1e9) + 1 : k + BATCH;
    if (due > limit) due = limit;
    int blocked = 0;
    while (k < due) {
      if (!queue_packet(f, 1)) { blocked = 1; break; }
      k++;
      if (++f == opt.flows) f = 0;
    }
    flush_all(1);
    drain_rx();
    progress("measure", t, t0);
    if (blocked) wait_rx(20000);
    else if (opt.rate > 0) {
      uint64_t next = t0 + (uint64_t)((double)k * 1e9 / opt.rate);
      uint64_t t2 = now_ns();
      if (next > t2) wait_rx(next - t2 < tick_ns() ? tick_ns() : next - t2 < 50000000 ? next - t2 : 50000000);
    }
  }
  while (pending_sends() && !stop_flag) { flush_all(1); drain_rx(); }
  uint64_t t_end = now_ns();
  double cpu2 = cpu_seconds();
  fprintf(stderr, "{\"event\":\"drain\",\"elapsedMs\":%.1f}\n", (double)(t_end - t0) / 1e6);
  fflush(stderr);
  drain_for((uint64_t)opt.drain_ms * 1000000ull, cnt[0].sent + cnt[1].sent);
  double secs = (double)(t_end - t0) / 1e9;

  /* Per flow, over both phases: complete = every packet sent to it came back. */
  uint64_t flows_complete = 0, flows_with_loss = 0, flows_no_reply = 0;
  for (uint32_t i = 0; i < opt.flows; i++) {
    if (recv_count[i] == 0) flows_no_reply++;
    if (recv_count[i] >= next_seq[i]) flows_complete++; else flows_with_loss++;
  }
  struct counts *w = &cnt[0], *m = &cnt[1];
  int64_t lost_w = (int64_t)w->sent - (int64_t)w->received, lost_m = (int64_t)m->sent - (int64_t)m->received;
  printf("{\"tool\":\"flowgen\",\"runId\":%u,\"flows\":%u,\"sockets\":%d,\"ports\":[", opt.run_id, opt.flows, opt.sockets);
  for (int s = 0; s < opt.sockets; s++) printf("%s%u", s ? "," : "", ports[s]);
  printf("],\"sizeBytes\":%d,\"offeredPps\":%.1f,\"order\":\"round-robin\",", opt.size, opt.rate);
  printf("\"warmup\":{\"enabled\":%s,\"passes\":%d,\"sent\":%llu,\"received\":%llu,\"lost\":%lld,\"flowsWithoutReply\":%u,\"seconds\":%.3f},",
         opt.warmup ? "true" : "false", passes, (unsigned long long)w->sent, (unsigned long long)w->received, (long long)lost_w,
         warm_missing, warm_seconds);
  printf("\"sent\":%llu,\"received\":%llu,\"lost\":%lld,\"reordered\":%llu,\"duplicated\":%llu,\"lateBeyondWindow\":%llu,\"invalid\":%llu,",
         (unsigned long long)m->sent, (unsigned long long)m->received, (long long)lost_m, (unsigned long long)m->reordered,
         (unsigned long long)m->duplicated, (unsigned long long)m->late, (unsigned long long)invalid);
  printf("\"lossPct\":%.4f,\"seconds\":%.4f,\"sentPps\":%.1f,\"receivedPps\":%.1f,\"sendBufferFull\":%llu,",
         m->sent ? 100.0 * (double)lost_m / (double)m->sent : 0.0, secs, secs > 0 ? (double)m->sent / secs : 0,
         secs > 0 ? (double)m->received / secs : 0, (unsigned long long)(m->send_again + w->send_again));
  printf("\"flowsComplete\":%llu,\"flowsWithLoss\":%llu,\"flowsWithoutReply\":%llu,",
         (unsigned long long)flows_complete, (unsigned long long)flows_with_loss, (unsigned long long)flows_no_reply);
  printf("\"cpuSeconds\":{\"total\":%.4f,\"measure\":%.4f},", cpu_seconds() - cpu0, cpu2 - cpu1);
  printf("\"rttNs\":{\"histogram\":\"log-linear, 32 sub-buckets per power of two (<= 3.1%% bucket width)\",\"count\":%llu,"
         "\"min\":%llu,\"mean\":%.0f,\"p50\":%llu,\"p90\":%llu,\"p99\":%llu,\"p999\":%llu,\"max\":%llu}",
         (unsigned long long)hist_count, (unsigned long long)(hist_count ? hist_min : 0), hist_count ? hist_sum / (double)hist_count : 0.0,
         (unsigned long long)hist_pct(50), (unsigned long long)hist_pct(90), (unsigned long long)hist_pct(99),
         (unsigned long long)hist_pct(99.9), (unsigned long long)hist_max);
  printf(",\"interrupted\":%s}\n", stop_flag ? "true" : "false");
  return 0;
}
