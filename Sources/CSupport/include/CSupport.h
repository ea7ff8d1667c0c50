// C shims for what Swift cannot call directly: function-like macros, variadic
// functions and declarations glibc only exposes under _GNU_SOURCE. Each
// function is tiny and says why it exists; everything else is Swift.
#ifndef COLO_CSUPPORT_H
#define COLO_CSUPPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>

/// CMSG_SPACE is a macro: bytes of control buffer needed for `length` bytes
/// of ancillary payload, padding included.
size_t colo_cmsg_space(size_t length);

/// CMSG_LEN is a macro: the cmsg_len value for `length` bytes of payload.
size_t colo_cmsg_len(size_t length);

/// CMSG_FIRSTHDR is a macro: the first control header of a received message.
struct cmsghdr *colo_cmsg_firsthdr(struct msghdr *message);

/// CMSG_NXTHDR is a macro: the control header after `header`, or NULL.
struct cmsghdr *colo_cmsg_nxthdr(struct msghdr *message, struct cmsghdr *header);

/// CMSG_DATA is a macro: where a control header's payload starts.
unsigned char *colo_cmsg_data(struct cmsghdr *header);

/// struct ucred and SO_PEERCRED are only declared under _GNU_SOURCE, which
/// Swift's Glibc module does not define. Returns 0 or -1 with errno set.
int colo_peer_credentials(int socket, pid_t *pid, uid_t *uid, gid_t *gid);

/// prctl is variadic. Sets no_new_privs so that execve can never grant
/// privileges again; required before an unprivileged seccomp filter.
/// Returns 0 or -1 with errno set.
int colo_set_no_new_privs(void);

/// prctl is variadic. Reads the no_new_privs flag back for status reports.
int colo_get_no_new_privs(void);

struct pollfd;

/// ppoll is only declared under _GNU_SOURCE. Waits like poll(2) but for
/// `timeout_ns` nanoseconds (negative: without limit), for precise
/// per-frame deadlines. Returns as poll does.
int colo_poll_ns(struct pollfd *fds, unsigned long count, int64_t timeout_ns);

/// memfd_create is only declared under _GNU_SOURCE. Returns the fd or -1.
int colo_memfd_create(const char *name, unsigned int flags);

/// MFD_* flags are macros under _GNU_SOURCE; exported as constants.
extern const unsigned int colo_mfd_cloexec;
extern const unsigned int colo_mfd_allow_sealing;

/// fcntl is variadic and F_ADD_SEALS / F_GET_SEALS are _GNU_SOURCE macros.
/// Adds `seals` (a combination of the colo_seal_* constants) to a memfd.
int colo_add_seals(int fd, int seals);
int colo_get_seals(int fd);
extern const int colo_seal_shrink;
extern const int colo_seal_grow;
extern const int colo_seal_seal;

/// capset(2) has no glibc wrapper and libcap would be a whole dependency for
/// two calls. Empties the ambient, bounding, inheritable, permitted and
/// effective capability sets. Returns 0 or -1 with errno set.
int colo_drop_all_capabilities(void);

/// capget(2), likewise: the effective set as a bitmask, or -1 with errno set.
int colo_effective_capabilities(uint64_t *mask);

/// syscall(2) is variadic. The sandbox probe calls a syscall by number with
/// up to three arguments to see whether the seccomp filter refuses it.
long colo_syscall3(long number, long a, long b, long c);

/// pthread_setname_np is only declared under _GNU_SOURCE. Names the calling
/// thread (at most 15 bytes) so `top -H` and core dumps show its job.
void colo_set_thread_name(const char *name);

/// accept4 is only declared under _GNU_SOURCE. Accepts with SOCK_CLOEXEC set
/// atomically, so no child a daemon spawns inherits a control connection.
int colo_accept_cloexec(int socket);

/// fallocate and its FALLOC_FL_* flags are only declared under _GNU_SOURCE.
/// Deallocates [offset, offset + length) of a file, keeping its size: the
/// range reads as zeros afterwards. Returns 0 or -1 with errno set.
int colo_punch_hole(int fd, off_t offset, off_t length);

/// SEEK_DATA and SEEK_HOLE are _GNU_SOURCE macros. The next offset at or
/// after `offset` that holds data (or is a hole); -1 with errno ENXIO past
/// the last data.
off_t colo_seek_data(int fd, off_t offset);
off_t colo_seek_hole(int fd, off_t offset);
/// <sys/eventfd.h> is not in Swift's Glibc module. A non-blocking,
/// close-on-exec eventfd (wake-ups, KVM ioeventfds), or -1 with errno set.
int colo_eventfd(void);

/// C11 atomics on memory shared with a guest (virtqueue indexes) or with
/// other threads (dirty bitmaps): Swift has no atomic view of arbitrary
/// raw memory. Acquire/release order ring entries against ring indexes.
uint16_t colo_load_acquire_u16(const void *address);
void colo_store_release_u16(void *address, uint16_t value);
/// A full fence: a device's used-index store must be visible before it
/// reads the driver's notification-suppression flags.
void colo_fence_seq_cst(void);
/// Sets bits in a bitmap word shared between threads.
void colo_atomic_or_u64(uint64_t *word, uint64_t bits);
/// Reads and clears a bitmap word shared between threads.
uint64_t colo_atomic_exchange_u64(uint64_t *word, uint64_t value);

/// sched_getaffinity and CPU_COUNT are _GNU_SOURCE (and CPU_COUNT a macro).
/// CPUs this process may run on, at least 1; sysconf would read /sys, which
/// the sandbox refuses.
int colo_available_cpus(void);
/// Runs the calling thread (and threads it starts later) on `cpu` alone
/// (sched_setaffinity, _GNU_SOURCE): a benchmark keeps two simulated hosts
/// on separate CPUs. 0 or -1 with errno.
int colo_pin_thread_to_cpu(int cpu);

/// recvmmsg and struct mmsghdr are _GNU_SOURCE. Receives up to `count`
/// datagrams without waiting, the i-th into `buffer + i * slot_size`
/// (at most `slot_size` bytes), its full length into `lengths[i]` (longer
/// than `slot_size` when it was truncated). `count` is at most
/// COLO_DATAGRAM_BATCH. Returns the number received, or -1 with errno set.
int colo_receive_datagrams(int fd, unsigned char *buffer, size_t slot_size, unsigned int count, size_t *lengths);

/// sendmmsg is _GNU_SOURCE. Sends up to `count` datagrams (at most
/// COLO_DATAGRAM_BATCH), the i-th `lengths[i]` bytes at `buffer + offsets[i]`,
/// without waiting or SIGPIPE. Returns the number sent, or -1 with errno set.
int colo_send_datagrams(int fd, const unsigned char *buffer, const size_t *offsets, const size_t *lengths,
                        unsigned int count);

/// The most datagrams one colo_receive_datagrams / colo_send_datagrams call moves.
#define COLO_DATAGRAM_BATCH 64

/// Opens (creating if needed) the tap interface `name` as an Ethernet
/// frame fd (IFF_TAP | IFF_NO_PI, close-on-exec). Needs CAP_NET_ADMIN, so
/// supervisord calls it before it drops its capabilities. -1 and errno on
/// failure.
int colo_open_tap(const char *name);

#endif
