/* Boot sequence and the main loop (temporary skeleton). */
#include "console.h"
#include "memory.h"
#include "multiboot.h"
#include "idt.h"
#include "pic.h"
#include "pit.h"
#include "pci.h"
#include "power.h"
#include "cmdline.h"
#include "io.h"
#include <string.h>

static char cmdline[1024];
static struct config cfg;

void kmain(uint32_t magic, uint32_t mbi_phys)
{
    console_init();
    kprintf("COLO-GUEST START\n");
    if (magic != MULTIBOOT_LOADER_MAGIC)
        fatal("not started by a multiboot loader (eax=0x%x)", magic);
    const struct multiboot_info *mbi = (const void *)(uint64_t)mbi_phys;
    uint64_t mbi_end = mbi_phys + sizeof *mbi;
    if (mbi->flags & MBI_FLAG_CMDLINE) {
        const char *c = (const char *)(uint64_t)mbi->cmdline;
        size_t n = strlen(c);
        if (n >= sizeof cmdline)
            n = sizeof cmdline - 1;
        memcpy(cmdline, c, n);
        if (mbi->cmdline + n + 1 > mbi_end)
            mbi_end = mbi->cmdline + n + 1;
    }
    if ((mbi->flags & MBI_FLAG_MMAP) && mbi->mmap_addr + mbi->mmap_length > mbi_end)
        mbi_end = mbi->mmap_addr + mbi->mmap_length;
    kprintf("COLO-GUEST CMDLINE %s\n", cmdline);
    memory_init(mbi, mbi_end);
    idt_init();
    pic_init();
    pci_scan();
    power_init();
    cmdline_parse(cmdline, &cfg);
    pit_init();
    sti();
    uint64_t last = 0;
    for (;;) {
        cli();
        if (ticks - last >= TICK_HZ) {
            last = ticks;
            sti();
            kprintf("COLO-GUEST TICK %lu\n", last / TICK_HZ);
            continue;
        }
        sti_hlt();
    }
}
