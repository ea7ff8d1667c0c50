/* Interrupt and exception entry stubs. Each pushes a dummy error code where
 * the CPU pushes none, then its vector, and jumps to a common path that saves
 * the general registers and calls interrupt_dispatch(struct trap_frame *).
 * No FPU/SSE state is saved: the guest is built with -mgeneral-regs-only. */
    .text
    .code64

.macro STUB vec, has_err
    .align 16
isr_stub_\vec:
    .if \has_err == 0
    pushq $0
    .endif
    pushq $\vec
    jmp isr_common
.endm

isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    /* The SysV ABI wants a 16-byte aligned stack at the call. */
    movq %rsp, %rbx
    andq $-16, %rsp
    cld
    call interrupt_dispatch
    movq %rbx, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp               /* vector and error code */
    iretq

/* Every vector we never program (48-255), notably the local APIC's spurious
 * vector 0xFF: no error code, no EOI owed, just return. */
    .globl isr_ignore
    .align 16
isr_ignore:
    iretq

/* Vectors 0-31: exceptions (8, 10-14, 17, 21, 29, 30 push an error code);
 * 32-47: the two 8259 PICs, remapped there by pic.c. */
STUB 0,0
STUB 1,0
STUB 2,0
STUB 3,0
STUB 4,0
STUB 5,0
STUB 6,0
STUB 7,0
STUB 8,1
STUB 9,0
STUB 10,1
STUB 11,1
STUB 12,1
STUB 13,1
STUB 14,1
STUB 15,0
STUB 16,0
STUB 17,1
STUB 18,0
STUB 19,0
STUB 20,0
STUB 21,1
STUB 22,0
STUB 23,0
STUB 24,0
STUB 25,0
STUB 26,0
STUB 27,0
STUB 28,0
STUB 29,1
STUB 30,1
STUB 31,0
.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
STUB \v,0
.endr

    .section .rodata
    .align 8
    .globl isr_stub_table
isr_stub_table:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
    .quad isr_stub_\v
.endr
