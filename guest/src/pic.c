/* 8259A PICs. Remapped off the exception vectors; everything masked until a
 * driver registers a handler. EOI is sent after the handlers ran: for a
 * level-triggered line the device has deasserted by then (virtio: reading the
 * ISR register), so the line does not fire again at once. */
#include "pic.h"
#include "io.h"
#include "memory.h"

#define PIC1 0x20
#define PIC2 0xA0
#define ELCR1 0x4D0
#define ELCR2 0x4D1

static uint16_t mask = 0xFFFF;

static void write_mask(void)
{
    outb(PIC1 + 1, mask & 0xFF);
    outb(PIC2 + 1, mask >> 8);
}

/* Make the 8259's INTR reach the CPU: local APIC in "virtual wire" mode,
 * LVT LINT0 = ExtINT (and LINT1 = NMI), the APIC software-enabled. Firmware
 * differs here: SeaBIOS sets this up, qboot leaves LINT0 masked, and then a
 * vCPU never sees a PIC interrupt. (Merely turning the APIC off through
 * IA32_APIC_BASE works under KVM but not under QEMU's TCG, which still routes
 * PIC interrupts through LINT0.) The APIC base is read from IA32_APIC_BASE. */
static void lapic_virtual_wire(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1B));
    if (!(lo & (1u << 11))) {
        lo |= 1u << 11;                         /* globally enable */
        __asm__ volatile("wrmsr" :: "a"(lo), "d"(hi), "c"(0x1B));
    }
    uint64_t base = ((uint64_t)hi << 32 | lo) & ~0xFFFull;
    map_mmio(base);
    volatile uint32_t *apic = (volatile uint32_t *)base;
    apic[0xF0 / 4] = 0x1FF;                     /* SVR: enabled, spurious 0xFF */
    apic[0x350 / 4] = 0x700;                    /* LVT LINT0: ExtINT, unmasked */
    apic[0x360 / 4] = 0x400;                    /* LVT LINT1: NMI */
}

void pic_init(void)
{
    lapic_virtual_wire();
    outb(PIC1, 0x11);            /* ICW1: edge (ELCR overrides), cascade, ICW4 */
    outb(PIC2, 0x11);
    outb(PIC1 + 1, 32);          /* ICW2: vector base */
    outb(PIC2 + 1, 40);
    outb(PIC1 + 1, 4);           /* ICW3: slave on IRQ2 */
    outb(PIC2 + 1, 2);
    outb(PIC1 + 1, 1);           /* ICW4: 8086 mode, normal EOI */
    outb(PIC2 + 1, 1);
    mask = 0xFFFF & ~(1u << 2);  /* the cascade line stays open */
    write_mask();
}

void pic_unmask(int irq) { mask &= ~(1u << irq); write_mask(); }
void pic_mask(int irq) { mask |= 1u << irq; write_mask(); }

void pic_eoi(int irq)
{
    if (irq >= 8)
        outb(PIC2, 0x20);
    outb(PIC1, 0x20);
}

void pic_set_level(int irq)
{
    /* IRQ 0, 1, 2, 8 and 13 must stay edge-triggered (chipset rule). */
    uint16_t port = irq < 8 ? ELCR1 : ELCR2;
    uint8_t v = inb(port);
    outb(port, v | (1u << (irq & 7)));
}

int pic_spurious(int irq)
{
    if (irq != 7 && irq != 15)
        return 0;
    uint16_t port = irq == 7 ? PIC1 : PIC2;
    outb(port, 0x0B);            /* OCW3: read in-service register */
    if (inb(port) & 0x80)
        return 0;
    if (irq == 15)
        outb(PIC1, 0x20);        /* the master did see the cascade */
    return 1;
}
