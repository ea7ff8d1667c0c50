/* The parts of the multiboot (v1) information structure the guest reads. */
#pragma once
#include <stdint.h>

#define MULTIBOOT_LOADER_MAGIC 0x2BADB002
#define MBI_FLAG_MEM     (1u << 0)   /* mem_lower / mem_upper valid */
#define MBI_FLAG_CMDLINE (1u << 2)
#define MBI_FLAG_MMAP    (1u << 6)

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower, mem_upper;   /* KiB below 1 MiB / KiB from 1 MiB on */
    uint32_t boot_device;
    uint32_t cmdline;
    uint32_t mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
} __attribute__((packed));

struct multiboot_mmap_entry {
    uint32_t size;                   /* of the rest of the entry */
    uint64_t addr, len;
    uint32_t type;                   /* 1 = usable RAM */
} __attribute__((packed));
