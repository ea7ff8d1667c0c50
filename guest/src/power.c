/* Power off. QEMU's PIIX4 (i440fx "pc" machine) ACPI PM block sits at the I/O
 * base firmware programs into the PM function's PMBA register; SeaBIOS uses
 * 0x600, so PM1a_CNT is 0x604. Writing SLP_EN (bit 13) with SLP_TYP 0 makes
 * QEMU shut down (it treats sleep type 0 as S5). vmmd implements the same port.
 * Firmware that does not program PMBA (qboot) would leave that port dead, so
 * power_init() programs it when it finds the PIIX4 PM function unconfigured. */
#include "power.h"
#include "pci.h"
#include "io.h"
#include "console.h"

#define PM_BASE 0x600
#define PM1A_CNT (PM_BASE + 4)
#define SLP_EN (1u << 13)

void power_init(void)
{
    struct pci_dev *pm = pci_find(0x8086, 0x7113, 0);   /* PIIX4 ACPI/PM */
    if (!pm)
        return;
    uint32_t pmba = pci_read32(pm, 0x40);
    uint8_t misc = pci_read8(pm, 0x80);
    if ((pmba & 0xFFC0) != PM_BASE || !(misc & 1)) {
        pci_write32(pm, 0x40, PM_BASE | 1);
        pci_write8(pm, 0x80, misc | 1);              /* PMIOSE: enable it */
        kprintf("COLO-GUEST PM base set to 0x%x (was 0x%x, enable=%u)\n",
                PM_BASE, pmba & 0xFFC0, misc & 1);
    }
}

void power_off(void)
{
    kprintf("COLO-GUEST POWEROFF\n");
    cli();
    outw(PM1A_CNT, SLP_EN);
    /* Still here: nothing implements that port. Stop for good; the host sees
     * a halted vCPU with interrupts off (and no further console output). */
    for (;;)
        __asm__ volatile("cli; hlt");
}
