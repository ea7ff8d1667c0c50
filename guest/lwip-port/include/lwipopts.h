/* lwIP configuration for the test guest: raw API only, NO_SYS (one thread,
 * the main loop; interrupt handlers never call into lwIP), IPv4 only. */
#pragma once

#define NO_SYS                  1
#define SYS_LIGHTWEIGHT_PROT    0      /* no lwIP calls from interrupts */
#define LWIP_NETCONN            0
#define LWIP_SOCKET             0
#define LWIP_IPV4               1
#define LWIP_IPV6               0
#define LWIP_ARP                1
#define LWIP_ETHERNET           1
#define LWIP_ICMP               1
#define LWIP_RAW                0
#define LWIP_UDP                1
#define LWIP_TCP                1
#define LWIP_DHCP               0
#define LWIP_AUTOIP             0
#define LWIP_IGMP               0
#define LWIP_DNS                0
#define LWIP_STATS              0
#define LWIP_NETIF_STATUS_CALLBACK 0
#define LWIP_NETIF_LINK_CALLBACK   0
#define LWIP_SINGLE_NETIF       1
#define IP_REASSEMBLY           0
#define IP_FRAG                 0

/* Memory: lwIP's own heap and pools live in .bss (sizes below). */
#define MEM_ALIGNMENT           8
#define MEM_SIZE                (256 * 1024)
#define MEMP_NUM_PBUF           64
#define MEMP_NUM_UDP_PCB        8
#define MEMP_NUM_TCP_PCB        32
#define MEMP_NUM_TCP_PCB_LISTEN 4
#define MEMP_NUM_TCP_SEG        128
#define PBUF_POOL_SIZE          64
#define PBUF_POOL_BUFSIZE       1536
#define ARP_TABLE_SIZE          8

/* TCP: a full-size window; echo and HTTP replies are small. */
#define TCP_MSS                 1460
#define TCP_WND                 (8 * TCP_MSS)
#define TCP_SND_BUF             (8 * TCP_MSS)
#define TCP_SND_QUEUELEN        (4 * TCP_SND_BUF / TCP_MSS)
#define TCP_QUEUE_OOSEQ         1
#define LWIP_TCP_KEEPALIVE      0
/* Reply ACKs go out at once rather than on the 250 ms fast timer: on a guest
 * running ~1M instructions/s, round trips are what the tests measure. */
#define LWIP_TCP_TIMESTAMPS     0

/* Checksums in software (the virtio devices are used without offloads). */
#define CHECKSUM_GEN_IP         1
#define CHECKSUM_GEN_UDP        1
#define CHECKSUM_GEN_TCP        1
#define CHECKSUM_GEN_ICMP       1
#define CHECKSUM_CHECK_IP       1
#define CHECKSUM_CHECK_UDP      1
#define CHECKSUM_CHECK_TCP      1
#define CHECKSUM_CHECK_ICMP     1
#define LWIP_CHECKSUM_ON_COPY   1

#define LWIP_DEBUG              0
