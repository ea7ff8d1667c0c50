/* 32-bit multiboot entry, then the switch to 64-bit long mode.
 *
 * The multiboot loader (QEMU's, or vmmd's) enters _start in 32-bit protected
 * mode, paging off, EAX = 0x2BADB002, EBX = physical address of the multiboot
 * info. We build a minimal identity map of the first BOOT_MAP_MIB MiB with
 * 4 KiB pages only (this machine's KVM loses writes made through 2 MiB pages),
 * enable PAE + EFER.LME + paging, and far-jump into 64-bit code. long_mode.c
 * later extends the identity map over all RAM the multiboot memory map lists.
 */
#define MB_MAGIC  0x1BADB002
/* bit 0: page-align modules; bit 1: give memory info; bit 16: the address
 * fields below are valid (QEMU then loads from them rather than from ELF). */
#define MB_FLAGS  0x00010003
#define BOOT_MAP_MIB 16          /* must cover the image, its bss, and the mbi */

    .section .multiboot, "a"
    .align 4
    .globl multiboot_header
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long multiboot_header      /* header_addr */
    .long _image_start          /* load_addr */
    .long _load_end             /* load_end_addr */
    .long _end                  /* bss_end_addr */
    .long _start                /* entry_addr */

    .section .text.boot, "ax"
    .code32
    .globl _start
_start:
    cli
    cld
    movl %eax, %esi              /* keep the loader's magic and mbi pointer */
    movl %ebx, %edi
    movl $boot_stack_top, %esp

    /* Long mode present? CPUID 0x80000001 EDX bit 29. Otherwise say so on
     * COM1 and halt: nothing else could work. */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb no_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz no_long_mode

    /* Page tables live in .bss (zeroed by the loader: bss_end_addr). */
    /* PTs: boot_pt[i] = i * 4096 | present | writable, BOOT_MAP_MIB*256 entries */
    movl $boot_pt, %ebx
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $12, %eax
    orl $3, %eax
    movl %eax, (%ebx,%ecx,8)
    movl $0, 4(%ebx,%ecx,8)
    incl %ecx
    cmpl $(BOOT_MAP_MIB * 256), %ecx
    jb 1b
    /* PD entries 0..BOOT_MAP_MIB/2-1 point at the PTs */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pt, %eax
    orl $3, %eax
    movl %eax, boot_pd(,%ecx,8)
    incl %ecx
    cmpl $(BOOT_MAP_MIB / 2), %ecx
    jb 2b
    movl $boot_pd, %eax
    orl $3, %eax
    movl %eax, boot_pdpt
    movl $boot_pdpt, %eax
    orl $3, %eax
    movl %eax, boot_pml4

    movl %cr4, %eax
    orl $(1 << 5), %eax          /* PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx       /* EFER */
    rdmsr
    orl $(1 << 8), %eax          /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax        /* PG | PE */
    andl $~0x60000000, %eax      /* caches on: clear CD, NW */
    movl %eax, %cr0

    lgdt gdt_desc
    ljmp $0x08, $long_mode_entry

no_long_mode:
    movl $no_lm_msg, %esi
3:  movb (%esi), %al
    testb %al, %al
    jz 5f
    movw $0x3fd, %dx             /* wait for THR empty */
4:  inb %dx, %al
    testb $0x20, %al
    jz 4b
    movb (%esi), %al
    movw $0x3f8, %dx
    outb %al, %dx
    incl %esi
    jmp 3b
5:  cli
    hlt
    jmp 5b

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorq %rbp, %rbp
    /* kmain(uint32_t magic, uint32_t mbi_phys) */
    movl %esi, %eax
    movl %edi, %esi
    movl %eax, %edi
    call kmain
6:  cli
    hlt
    jmp 6b

    .section .rodata
no_lm_msg:
    .asciz "COLO-GUEST ERROR: CPU has no long mode\r\n"

    .align 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF     /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF     /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .section .bss
    .align 4096
    .globl boot_pml4, boot_pdpt, boot_pd
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4096
boot_pt:   .skip BOOT_MAP_MIB * 256 * 8
boot_stack: .skip 65536
    .globl boot_stack_top
boot_stack_top:
