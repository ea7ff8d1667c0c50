/* 8259A PICs. Remapped off the exception vectors; everything masked until a
 * driver registers a handler. EOI is sent after the handlers ran: for a
 * level-triggered line the device has deasserted by then (virtio: reading the
 * ISR register), so the line does not fire again at once. */
#include "pic.h"
#include "io.h"

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

/* Route the 8259's INTR straight to the CPU: clear IA32_APIC_BASE.EN (MSR
 * 0x1B bit 11), which turns the local APIC off entirely. Firmware differs here:
 * SeaBIOS leaves the LAPIC in virtual-wire mode (LVT0 = ExtINT), qboot leaves
 * LVT0 masked, and then a KVM vCPU never sees PIC interrupts. With the APIC
 * globally disabled the result no longer depends on the firmware, and vmmd
 * need not emulate LAPIC set-up for us. */
static void lapic_disable(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1B));
    lo &= ~(1u << 11);
    __asm__ volatile("wrmsr" :: "a"(lo), "d"(hi), "c"(0x1B));
}

void pic_init(void)
{
    lapic_disable();
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
