/* IDT with exception and IRQ gates; IRQ n of the PICs arrives as vector 32+n. */
#pragma once
#include <stdint.h>

struct trap_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss;
};

typedef void (*irq_handler)(void *arg);

void idt_init(void);
/* Several handlers may share one line (level-triggered PCI INTx). */
void irq_register(int irq, irq_handler fn, void *arg);
