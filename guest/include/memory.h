/* Physical memory: identity map of all RAM (4 KiB pages) and a page allocator. */
#pragma once
#include <stdint.h>
#include <stddef.h>
#include "multiboot.h"

/* Reads the memory map (or mem_upper), maps [0, top of RAM) with 4 KiB pages,
 * and starts the allocator above the image and the multiboot data. */
void memory_init(const struct multiboot_info *mbi, uint64_t mbi_end);
/* Zeroed, 4 KiB-aligned, never freed. Fatal when RAM runs out. */
void *alloc_pages(size_t n);
/* The rest of the allocator's RAM region, handed over whole (to the dirtier). */
void take_free_region(uint64_t *start, uint64_t *end);
/* Identity-map one 4 KiB page of device registers, uncached. */
void map_mmio(uint64_t phys);
extern uint64_t ram_total;           /* bytes of usable RAM in the map */
