#define _GNU_SOURCE
#include "CSupport.h"

#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>
#include <poll.h>
#include <time.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sched.h>
#include <sys/mman.h>
#include <errno.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <stdatomic.h>

size_t colo_cmsg_space(size_t length) { return CMSG_SPACE(length); }

size_t colo_cmsg_len(size_t length) { return CMSG_LEN(length); }

struct cmsghdr *colo_cmsg_firsthdr(struct msghdr *message) { return CMSG_FIRSTHDR(message); }

struct cmsghdr *colo_cmsg_nxthdr(struct msghdr *message, struct cmsghdr *header) {
    return CMSG_NXTHDR(message, header);
}

unsigned char *colo_cmsg_data(struct cmsghdr *header) { return CMSG_DATA(header); }

int colo_peer_credentials(int socket, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred credentials;
    socklen_t length = sizeof(credentials);
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

int colo_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }

int colo_get_no_new_privs(void) { return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); }

int colo_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

const unsigned int colo_mfd_cloexec = MFD_CLOEXEC;
const unsigned int colo_mfd_allow_sealing = MFD_ALLOW_SEALING;

int colo_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals); }
int colo_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }
const int colo_seal_shrink = F_SEAL_SHRINK;
const int colo_seal_grow = F_SEAL_GROW;
const int colo_seal_seal = F_SEAL_SEAL;

int colo_drop_all_capabilities(void) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    for (int cap = 0; cap <= 63; cap++) {
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0) break; /* past the kernel's last capability */
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EPERM) return -1;
    }
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
    return (int)syscall(SYS_capset, &header, data);
}

int colo_effective_capabilities(uint64_t *mask) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    *mask = ((uint64_t)data[1].effective << 32) | data[0].effective;
    return 0;
}

long colo_syscall3(long number, long a, long b, long c) { return syscall(number, a, b, c); }

void colo_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

int colo_accept_cloexec(int socket) { return accept4(socket, NULL, NULL, SOCK_CLOEXEC); }

int colo_punch_hole(int fd, off_t offset, off_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

off_t colo_seek_data(int fd, off_t offset) { return lseek(fd, offset, SEEK_DATA); }
off_t colo_seek_hole(int fd, off_t offset) { return lseek(fd, offset, SEEK_HOLE); }

uint16_t colo_load_acquire_u16(const void *address) {
    return atomic_load_explicit((_Atomic uint16_t *)address, memory_order_acquire);
}

void colo_store_release_u16(void *address, uint16_t value) {
    atomic_store_explicit((_Atomic uint16_t *)address, value, memory_order_release);
}

void colo_fence_seq_cst(void) { atomic_thread_fence(memory_order_seq_cst); }

void colo_atomic_or_u64(uint64_t *word, uint64_t bits) {
    atomic_fetch_or_explicit((_Atomic uint64_t *)word, bits, memory_order_relaxed);
}

uint64_t colo_atomic_exchange_u64(uint64_t *word, uint64_t value) {
    return atomic_exchange_explicit((_Atomic uint64_t *)word, value, memory_order_acq_rel);
}

int colo_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int colo_available_cpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int count = CPU_COUNT(&set);
    return count > 0 ? count : 1;
}

int colo_pin_thread_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int colo_poll_ns(struct pollfd *fds, unsigned long count, int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return ppoll(fds, count, NULL, NULL);
    struct timespec timeout = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    return ppoll(fds, count, &timeout, NULL);
}

int colo_receive_datagrams(int fd, unsigned char *buffer, size_t slot_size, unsigned int count, size_t *lengths)
{
    struct mmsghdr messages[COLO_DATAGRAM_BATCH];
    struct iovec vectors[COLO_DATAGRAM_BATCH];
    if (count > COLO_DATAGRAM_BATCH)
        count = COLO_DATAGRAM_BATCH;
    memset(messages, 0, sizeof(struct mmsghdr) * count);
    for (unsigned int i = 0; i < count; i++) {
        vectors[i].iov_base = buffer + (size_t)i * slot_size;
        vectors[i].iov_len = slot_size;
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    int received = recvmmsg(fd, messages, count, MSG_DONTWAIT | MSG_TRUNC, NULL);
    for (int i = 0; i < received; i++)
        lengths[i] = messages[i].msg_len;
    return received;
}

int colo_send_datagrams(int fd, const unsigned char *buffer, const size_t *offsets, const size_t *lengths,
                        unsigned int count)
{
    struct mmsghdr messages[COLO_DATAGRAM_BATCH];
    struct iovec vectors[COLO_DATAGRAM_BATCH];
    if (count > COLO_DATAGRAM_BATCH)
        count = COLO_DATAGRAM_BATCH;
    memset(messages, 0, sizeof(struct mmsghdr) * count);
    for (unsigned int i = 0; i < count; i++) {
        vectors[i].iov_base = (void *)(buffer + offsets[i]);
        vectors[i].iov_len = lengths[i];
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    return sendmmsg(fd, messages, count, MSG_DONTWAIT | MSG_NOSIGNAL);
}

int colo_open_tap(const char *name)
{
    if (strlen(name) >= IFNAMSIZ) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    request.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &request) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}
