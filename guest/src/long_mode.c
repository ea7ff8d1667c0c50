/* Completes what boot.S began: boot.S identity-mapped the first 16 MiB so C
 * could run; here the identity map is extended over all RAM the loader
 * reported, still with 4 KiB pages only (this machine's KVM silently drops
 * writes through 2 MiB pages). Page-table pages come from the bump allocator,
 * which only hands out memory already mapped; mapping proceeds upwards one
 * 2 MiB page table at a time, so the allocator always stays ahead. */
#include "memory.h"
#include "console.h"
#include <string.h>

#define PAGE 4096ull
#define PTE_P 1ull
#define PTE_W 2ull
#define BOOT_MAPPED (16ull << 20)
#define MAX_RAM (64ull << 30)

extern uint64_t boot_pml4[512], boot_pdpt[512], boot_pd[512];
extern char _end[];

uint64_t ram_total;
static uint64_t alloc_next, alloc_limit, mapped_top;

void *alloc_pages(size_t n)
{
    uint64_t a = alloc_next;
    if (a + n * PAGE > alloc_limit || a + n * PAGE > mapped_top)
        fatal("out of memory allocating %lu pages", (uint64_t)n);
    alloc_next += n * PAGE;
    memset((void *)a, 0, n * PAGE);
    return (void *)a;
}

void take_free_region(uint64_t *start, uint64_t *end)
{
    *start = alloc_next;
    *end = alloc_limit < mapped_top ? alloc_limit : mapped_top;
    alloc_next = *end;
}

static uint64_t *table_at(uint64_t *parent, unsigned idx)
{
    if (!(parent[idx] & PTE_P)) {
        uint64_t *t = alloc_pages(1);
        parent[idx] = (uint64_t)t | PTE_P | PTE_W;
    }
    return (uint64_t *)(parent[idx] & ~0xFFFull);
}

/* Map one 2 MiB-aligned range with a fresh page table of 512 4 KiB pages. */
static void map_2m(uint64_t base)
{
    uint64_t *pdpt = table_at(boot_pml4, (base >> 39) & 511);
    uint64_t *pd = table_at(pdpt, (base >> 30) & 511);
    unsigned pdi = (base >> 21) & 511;
    if (pd[pdi] & PTE_P)
        return;
    uint64_t *pt = alloc_pages(1);
    for (unsigned i = 0; i < 512; i++)
        pt[i] = (base + i * PAGE) | PTE_P | PTE_W;
    pd[pdi] = (uint64_t)pt | PTE_P | PTE_W;
}

void map_mmio(uint64_t phys)
{
    phys &= ~(PAGE - 1);
    uint64_t *pdpt = table_at(boot_pml4, (phys >> 39) & 511);
    uint64_t *pd = table_at(pdpt, (phys >> 30) & 511);
    uint64_t *pt = table_at(pd, (phys >> 21) & 511);
    /* PCD|PWT: device registers must not be cached. */
    pt[(phys >> 12) & 511] = phys | PTE_P | PTE_W | 0x18;
    __asm__ volatile("invlpg (%0)" :: "r"(phys) : "memory");
}

void memory_init(const struct multiboot_info *mbi, uint64_t mbi_end)
{
    uint64_t top = 0;
    uint64_t start = ((uint64_t)_end > mbi_end ? (uint64_t)_end : mbi_end);
    start = (start + PAGE - 1) & ~(PAGE - 1);
    alloc_limit = 0;
    if (mbi->flags & MBI_FLAG_MMAP) {
        uint64_t p = mbi->mmap_addr, e = p + mbi->mmap_length;
        while (p < e) {
            const struct multiboot_mmap_entry *m = (const void *)p;
            if (m->type == 1 && m->len) {
                uint64_t end = m->addr + m->len;
                ram_total += m->len;
                if (end > top)
                    top = end;
                /* The allocator owns the RAM region holding the image. */
                if (m->addr <= start && start < end)
                    alloc_limit = end & ~(PAGE - 1);
            }
            p += m->size + 4;
        }
    } else if (mbi->flags & MBI_FLAG_MEM) {
        top = (1ull << 20) + (uint64_t)mbi->mem_upper * 1024;
        ram_total = top - (1ull << 20) + (uint64_t)mbi->mem_lower * 1024;
        alloc_limit = top & ~(PAGE - 1);
    }
    if (!alloc_limit || top < (32ull << 20))
        fatal("need at least 32 MiB of RAM in the multiboot memory map (have %lu KiB)",
              ram_total >> 10);
    if (top > MAX_RAM)
        top = MAX_RAM;
    alloc_next = start;
    mapped_top = BOOT_MAPPED;
    for (uint64_t b = BOOT_MAPPED; b < top; b += 2ull << 20) {
        map_2m(b);
        mapped_top = b + (2ull << 20);
    }
    if (mapped_top > top)
        mapped_top = top;
    /* New entries were not-present before, so no stale TLB entries exist;
     * reloading CR3 is cheap insurance all the same. */
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3) :: "memory");
    kprintf("COLO-GUEST MEM ram=%luMiB mapped=0x%lx alloc=0x%lx-0x%lx\n",
            ram_total >> 20, mapped_top, alloc_next, alloc_limit);
}
