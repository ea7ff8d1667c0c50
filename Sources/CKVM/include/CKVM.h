// What Swift cannot take from <linux/kvm.h> by itself: the ioctl request
// numbers (function-like _IO/_IOW/_IOR/_IOWR macros) and the fields of
// struct kvm_run that live in anonymous unions. Each item is tiny and says
// why it exists; the KVM library's Swift code does everything else.
#ifndef COLO_CKVM_H
#define COLO_CKVM_H

#include <stdint.h>
#include <linux/kvm.h>

/// Request numbers, as KVM's _IO*(KVMIO, n, type) macros compute them.
/// On /dev/kvm:
extern const unsigned long colo_kvm_get_api_version;
extern const unsigned long colo_kvm_create_vm;
extern const unsigned long colo_kvm_check_extension;
extern const unsigned long colo_kvm_get_vcpu_mmap_size;
extern const unsigned long colo_kvm_get_supported_cpuid;
/// On a VM fd:
extern const unsigned long colo_kvm_create_vcpu;
extern const unsigned long colo_kvm_set_user_memory_region;
extern const unsigned long colo_kvm_set_tss_addr;
extern const unsigned long colo_kvm_set_identity_map_addr;
extern const unsigned long colo_kvm_create_irqchip;
extern const unsigned long colo_kvm_create_pit2;
extern const unsigned long colo_kvm_irq_line;
extern const unsigned long colo_kvm_ioeventfd;
/// On a vCPU fd:
extern const unsigned long colo_kvm_run;
extern const unsigned long colo_kvm_get_regs;
extern const unsigned long colo_kvm_set_regs;
extern const unsigned long colo_kvm_get_sregs;
extern const unsigned long colo_kvm_set_sregs;
extern const unsigned long colo_kvm_set_cpuid2;
/// Saving and restoring state (pause, checkpoints, migration):
extern const unsigned long colo_kvm_get_msr_index_list;
extern const unsigned long colo_kvm_get_irqchip;
extern const unsigned long colo_kvm_set_irqchip;
extern const unsigned long colo_kvm_get_pit2;
extern const unsigned long colo_kvm_set_pit2;
extern const unsigned long colo_kvm_get_clock;
extern const unsigned long colo_kvm_set_clock;
extern const unsigned long colo_kvm_get_dirty_log;
extern const unsigned long colo_kvm_clear_dirty_log;
extern const unsigned long colo_kvm_enable_cap;
extern const unsigned long colo_kvm_get_mp_state;
extern const unsigned long colo_kvm_set_mp_state;
extern const unsigned long colo_kvm_get_xsave;
extern const unsigned long colo_kvm_get_xsave2;
extern const unsigned long colo_kvm_set_xsave;
extern const unsigned long colo_kvm_get_xcrs;
extern const unsigned long colo_kvm_set_xcrs;
extern const unsigned long colo_kvm_get_msrs;
extern const unsigned long colo_kvm_set_msrs;
extern const unsigned long colo_kvm_get_lapic;
extern const unsigned long colo_kvm_set_lapic;
extern const unsigned long colo_kvm_get_vcpu_events;
extern const unsigned long colo_kvm_set_vcpu_events;
extern const unsigned long colo_kvm_get_debugregs;
extern const unsigned long colo_kvm_set_debugregs;
extern const unsigned long colo_kvm_get_tsc_khz;

/// KVM_IOEVENTFD_FLAG_* are shifts of enum constants Swift does not import.
extern const uint32_t colo_kvm_ioeventfd_flag_datamatch;
extern const uint32_t colo_kvm_ioeventfd_flag_pio;
extern const uint32_t colo_kvm_ioeventfd_flag_deassign;

/// kvm_run's exit details sit in an anonymous union Swift imports poorly;
/// these read the member that `exit_reason` says is valid.
static inline void colo_kvm_run_io(const struct kvm_run *run, uint8_t *direction, uint8_t *size,
                                   uint16_t *port, uint32_t *count, uint64_t *data_offset) {
    *direction = run->io.direction;
    *size = run->io.size;
    *port = run->io.port;
    *count = run->io.count;
    *data_offset = run->io.data_offset;
}

/// KVM_EXIT_MMIO: the access; `data` is the 8-byte buffer KVM reads a
/// written value from and takes a read's answer from.
static inline uint8_t *colo_kvm_run_mmio(struct kvm_run *run, uint64_t *address, uint32_t *length,
                                        uint8_t *is_write) {
    *address = run->mmio.phys_addr;
    *length = run->mmio.len;
    *is_write = run->mmio.is_write;
    return run->mmio.data;
}

/// KVM_EXIT_FAIL_ENTRY: the hardware's reason for refusing to enter.
static inline uint64_t colo_kvm_run_fail_entry_reason(const struct kvm_run *run) {
    return run->fail_entry.hardware_entry_failure_reason;
}

/// KVM_EXIT_INTERNAL_ERROR: KVM's sub-error code.
static inline uint32_t colo_kvm_run_internal_suberror(const struct kvm_run *run) {
    return run->internal.suberror;
}

/// KVM_EXIT_SYSTEM_EVENT: shutdown, reset or crash.
static inline uint32_t colo_kvm_run_system_event_type(const struct kvm_run *run) {
    return run->system_event.type;
}

/// struct kvm_irq_level's first field is an anonymous union (irq/status).
static inline struct kvm_irq_level colo_kvm_irq_level(uint32_t irq, uint32_t level) {
    struct kvm_irq_level value = {0};
    value.irq = irq;
    value.level = level;
    return value;
}

/// struct kvm_dirty_log and kvm_clear_dirty_log keep the bitmap pointer
/// in an anonymous union.
static inline struct kvm_dirty_log colo_kvm_dirty_log_request(uint32_t slot, void *bitmap) {
    struct kvm_dirty_log value = {0};
    value.slot = slot;
    value.dirty_bitmap = bitmap;
    return value;
}

static inline struct kvm_clear_dirty_log colo_kvm_clear_dirty_log_request(uint32_t slot, uint64_t first_page,
                                                                  uint32_t pages, void *bitmap) {
    struct kvm_clear_dirty_log value = {0};
    value.slot = slot;
    value.first_page = first_page;
    value.num_pages = pages;
    value.dirty_bitmap = bitmap;
    return value;
}

#endif
