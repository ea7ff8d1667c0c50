/* IDT set-up and the C side of interrupt dispatch. Exceptions are fatal: they
 * print the frame and power off, so a test sees a clear error, never a hang. */
#include "idt.h"
#include "pic.h"
#include "console.h"
#include <stdint.h>

struct idt_gate {
    uint16_t off_lo, sel;
    uint8_t ist, type;
    uint16_t off_mid;
    uint32_t off_hi, zero;
} __attribute__((packed));

static struct idt_gate idt[256];
extern const uint64_t isr_stub_table[48];
extern const char isr_ignore[];

#define MAX_SHARED 4
static struct { irq_handler fn; void *arg; } handlers[16][MAX_SHARED];

void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        uint64_t a = v < 48 ? isr_stub_table[v] : (uint64_t)isr_ignore;
        idt[v] = (struct idt_gate){
            .off_lo = a & 0xFFFF, .sel = 0x08, .ist = 0,
            .type = 0x8E,                     /* present, DPL 0, interrupt gate */
            .off_mid = (a >> 16) & 0xFFFF, .off_hi = a >> 32, .zero = 0,
        };
    }
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) d = {
        sizeof idt - 1, (uint64_t)(uintptr_t)idt };
    __asm__ volatile("lidt %0" :: "m"(d));
}

void irq_register(int irq, irq_handler fn, void *arg)
{
    for (int i = 0; i < MAX_SHARED; i++) {
        if (!handlers[irq][i].fn) {
            handlers[irq][i].fn = fn;
            handlers[irq][i].arg = arg;
            pic_unmask(irq);
            return;
        }
    }
    fatal("too many handlers on IRQ %d", irq);
}

void interrupt_dispatch(struct trap_frame *f)
{
    if (f->vector >= 32) {
        int irq = (int)f->vector - 32;
        if (pic_spurious(irq))
            return;
        for (int i = 0; i < MAX_SHARED && handlers[irq][i].fn; i++)
            handlers[irq][i].fn(handlers[irq][i].arg);
        pic_eoi(irq);
        return;
    }
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    fatal("exception %lu error=0x%lx rip=0x%lx rsp=0x%lx cr2=0x%lx",
          f->vector, f->error, f->rip, f->rsp, cr2);
}
