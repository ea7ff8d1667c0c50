/* Boot sequence and the main loop.
 *
 * Everything runs on one CPU in one loop: interrupt handlers only count ticks
 * or flag a device; the loop reaps the network rings, runs lwIP's timers, the
 * dirtier and the once-a-second tick line, then halts until the next
 * interrupt. Console markers (README.md) are printed along the way. */
#include "console.h"
#include "memory.h"
#include "multiboot.h"
#include "idt.h"
#include "pic.h"
#include "pit.h"
#include "pci.h"
#include "power.h"
#include "cmdline.h"
#include "virtio_blk.h"
#include "virtio_net.h"
#include "counter.h"
#include "dirtier.h"
#include "services.h"
#include "io.h"
#include "lwip/init.h"
#include "lwip/netif.h"
#include "lwip/timeouts.h"
#include "netif/ethernet.h"
#include <string.h>
#include <stdio.h>

static char cmdline[1024];
static struct config cfg;
static struct netif netif;

/* Copy what we need out of the multiboot info before any allocation can
 * overwrite it; returns the end of the loader's data (the allocator starts
 * above it). */
static uint64_t read_multiboot(uint32_t mbi_phys)
{
    const struct multiboot_info *mbi = (const void *)(uint64_t)mbi_phys;
    uint64_t end = mbi_phys + sizeof *mbi;
    if (mbi->flags & MBI_FLAG_CMDLINE) {
        const char *c = (const char *)(uint64_t)mbi->cmdline;
        size_t n = strlen(c);
        if (n >= sizeof cmdline)
            n = sizeof cmdline - 1;
        memcpy(cmdline, c, n);
        if (mbi->cmdline + n + 1 > end)
            end = mbi->cmdline + n + 1;
    }
    if ((mbi->flags & MBI_FLAG_MMAP) && mbi->mmap_addr + mbi->mmap_length > end)
        end = mbi->mmap_addr + mbi->mmap_length;
    return end;
}

static void fmt_ip(char *out, uint32_t a)
{
    snprintf(out, 16, "%u.%u.%u.%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
}

static void net_start(void)
{
    ip4_addr_t ip, mask, gw;
    IP4_ADDR(&ip, cfg.ip >> 24, (cfg.ip >> 16) & 255, (cfg.ip >> 8) & 255, cfg.ip & 255);
    IP4_ADDR(&mask, cfg.netmask >> 24, (cfg.netmask >> 16) & 255, (cfg.netmask >> 8) & 255,
             cfg.netmask & 255);
    IP4_ADDR(&gw, cfg.gw >> 24, (cfg.gw >> 16) & 255, (cfg.gw >> 8) & 255, cfg.gw & 255);
    lwip_init();
    if (!netif_add(&netif, &ip, &mask, &gw, 0, vnet_netif_init, ethernet_input))
        fatal("lwIP refused the network interface");
    netif_set_default(&netif);
    netif_set_up(&netif);
    echo_init();
    http_init();
    control_init();
}

void kmain(uint32_t magic, uint32_t mbi_phys)
{
    console_init();
    kprintf("COLO-GUEST START\n");
    if (magic != MULTIBOOT_LOADER_MAGIC)
        fatal("not started by a multiboot loader (eax=0x%x)", magic);
    uint64_t mbi_end = read_multiboot(mbi_phys);
    kprintf("COLO-GUEST CMDLINE %s\n", cmdline);
    memory_init((const struct multiboot_info *)(uint64_t)mbi_phys, mbi_end);
    idt_init();
    pic_init();
    pci_scan();
    power_init();                       /* before any fatal() that powers off */
    cmdline_parse(cmdline, &cfg);
    pit_init();
    sti();

    if (!blk_init())
        fatal("no virtio-blk disk (PCI 1af4:1001) found: the request counter needs one");
    int fresh;
    uint64_t count = counter_load(&fresh);
    kprintf("COLO-GUEST DISK count=%lu fresh=%d\n", count, fresh);

    if (!vnet_init())
        fatal("no virtio-net NIC (PCI 1af4:1000) found");
    net_start();

    uint64_t dstart, dend;
    take_free_region(&dstart, &dend);
    dirtier_init(dstart, dend, cfg.dirty_mib_s);

    char ip[16], gw[16];
    fmt_ip(ip, cfg.ip);
    fmt_ip(gw, cfg.gw);
    int prefix = 0;
    for (uint32_t m = cfg.netmask; m; m <<= 1)
        prefix++;
    kprintf("COLO-GUEST READY ip=%s/%d gw=%s dirty=%u region=%luMiB boot_ms=%lu\n",
            ip, prefix, gw, cfg.dirty_mib_s, dirtier_region_mib(), ticks * (1000 / TICK_HZ));

    uint64_t seen = ticks, next_line = ticks + TICK_HZ;
    for (;;) {
        vnet_poll(&netif);
        sys_check_timeouts();
        uint64_t t = ticks;
        for (; seen < t; seen++)
            dirtier_tick();
        if (t >= next_line) {
            next_line += TICK_HZ;
            kprintf("COLO-GUEST TICK s=%lu count=%lu dirty=%u\n",
                    t / TICK_HZ, counter_value(), dirtier_rate());
        }
        if (poweroff_requested) {
            vnet_poll(&netif);          /* the "ok poweroff" reply is queued: send it */
            power_off();
        }
        cli();
        if (!vnet_pending() && ticks == seen)
            cpu_idle();                 /* woken by the next tick or device IRQ */
        else
            sti();
    }
}
