#include "CKVM.h"

const unsigned long colo_kvm_get_api_version = KVM_GET_API_VERSION;
const unsigned long colo_kvm_create_vm = KVM_CREATE_VM;
const unsigned long colo_kvm_check_extension = KVM_CHECK_EXTENSION;
const unsigned long colo_kvm_get_vcpu_mmap_size = KVM_GET_VCPU_MMAP_SIZE;
const unsigned long colo_kvm_get_supported_cpuid = KVM_GET_SUPPORTED_CPUID;
const unsigned long colo_kvm_create_vcpu = KVM_CREATE_VCPU;
const unsigned long colo_kvm_set_user_memory_region = KVM_SET_USER_MEMORY_REGION;
const unsigned long colo_kvm_set_tss_addr = KVM_SET_TSS_ADDR;
const unsigned long colo_kvm_set_identity_map_addr = KVM_SET_IDENTITY_MAP_ADDR;
const unsigned long colo_kvm_create_irqchip = KVM_CREATE_IRQCHIP;
const unsigned long colo_kvm_create_pit2 = KVM_CREATE_PIT2;
const unsigned long colo_kvm_irq_line = KVM_IRQ_LINE;
const unsigned long colo_kvm_ioeventfd = KVM_IOEVENTFD;
const unsigned long colo_kvm_run = KVM_RUN;
const unsigned long colo_kvm_get_regs = KVM_GET_REGS;
const unsigned long colo_kvm_set_regs = KVM_SET_REGS;
const unsigned long colo_kvm_get_sregs = KVM_GET_SREGS;
const unsigned long colo_kvm_set_sregs = KVM_SET_SREGS;
const unsigned long colo_kvm_set_cpuid2 = KVM_SET_CPUID2;
const uint32_t colo_kvm_ioeventfd_flag_datamatch = KVM_IOEVENTFD_FLAG_DATAMATCH;
const uint32_t colo_kvm_ioeventfd_flag_pio = KVM_IOEVENTFD_FLAG_PIO;
const uint32_t colo_kvm_ioeventfd_flag_deassign = KVM_IOEVENTFD_FLAG_DEASSIGN;
