/* virtio-net driver (legacy virtio-pci), no offloads, no mergeable buffers:
 * every frame has the 10-byte virtio_net_hdr in front. Without
 * VIRTIO_F_ANY_LAYOUT a legacy driver must give the header its own descriptor,
 * so every buffer is a 2-descriptor chain: header, then frame. Frames are
 * copied between our DMA buffers and lwIP pbufs (one rep movsb each way).
 * Queue 0 receives, queue 1 transmits. */
#include "virtio_net.h"
#include "virtio_pci.h"
#include "memory.h"
#include "console.h"
#include "lwip/netif.h"
#include "lwip/etharp.h"
#include "lwip/pbuf.h"
#include "netif/ethernet.h"
#include <string.h>

#define VIRTIO_NET_F_MAC (1u << 5)
#define NET_HDR_LEN 10
#define FRAME_MAX 1514
#define NBUF 64                         /* per direction */
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct buf { uint8_t hdr[16]; uint8_t frame[2048 - 16]; };

static struct virtio_dev dev;
static struct virtq rxq, txq;
static struct buf *rxbuf, *txbuf;
static uint16_t tx_free[NBUF], tx_nfree;
static uint8_t mac[6];

static void rx_post(struct buf *b)
{
    uint64_t addr[2] = { (uint64_t)b->hdr, (uint64_t)b->frame };
    uint32_t len[2] = { NET_HDR_LEN, FRAME_MAX };
    int wr[2] = { 1, 1 };
    virtq_add(&rxq, addr, len, wr, 2, b);
}

static void kick(struct virtq *q)
{
    /* The device may say it needs no kick (it is already processing). */
    if (!(*(volatile uint16_t *)q->used & VRING_USED_F_NO_NOTIFY))
        virtq_notify(q);
}

int vnet_init(void)
{
    struct pci_dev *p = pci_find(0x1af4, 0x1000, 0);
    if (!p)
        return 0;
    virtio_pci_start(&dev, p, VIRTIO_NET_F_MAC);
    virtio_pci_setup_queue(&dev, &rxq, 0);
    virtio_pci_setup_queue(&dev, &txq, 1);
    if (dev.features & VIRTIO_NET_F_MAC) {
        for (int i = 0; i < 6; i++)
            mac[i] = virtio_cfg8(&dev, i);
    } else {
        /* Locally administered address, fixed: one guest per link here. */
        static const uint8_t def[6] = { 0x52, 0x54, 0x00, 0xc0, 0x10, 0x01 };
        memcpy(mac, def, 6);
    }
    rxbuf = alloc_pages(NBUF / 2);
    txbuf = alloc_pages(NBUF / 2);
    for (int i = 0; i < NBUF; i++) {
        rx_post(&rxbuf[i]);
        tx_free[tx_nfree++] = (uint16_t)i;
    }
    /* We reclaim TX buffers when we next send: no TX-done interrupts. */
    txq.avail[0] = VRING_AVAIL_F_NO_INTERRUPT;
    virtio_pci_ready(&dev);
    virtq_notify(&rxq);
    kprintf("COLO-GUEST NET io=0x%x irq=%u mac=%02x:%02x:%02x:%02x:%02x:%02x\n",
            dev.io, p->irq_line, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    return 1;
}

static void tx_reclaim(void)
{
    struct buf *b;
    while ((b = virtq_get(&txq, 0)))
        tx_free[tx_nfree++] = (uint16_t)(b - txbuf);
}

static err_t linkoutput(struct netif *n, struct pbuf *p)
{
    tx_reclaim();
    if (!tx_nfree || p->tot_len > FRAME_MAX)
        return ERR_MEM;                 /* TCP retransmits; ARP/UDP may drop */
    struct buf *b = &txbuf[tx_free[--tx_nfree]];
    memset(b->hdr, 0, NET_HDR_LEN);     /* no checksum offload, no GSO */
    pbuf_copy_partial(p, b->frame, p->tot_len, 0);
    uint64_t addr[2] = { (uint64_t)b->hdr, (uint64_t)b->frame };
    uint32_t len[2] = { NET_HDR_LEN, p->tot_len };
    int wr[2] = { 0, 0 };
    virtq_add(&txq, addr, len, wr, 2, b);
    kick(&txq);
    return ERR_OK;
}

int vnet_pending(void) { return dev.pending; }

void vnet_poll(struct netif *n)
{
    struct buf *b;
    uint32_t len;
    int posted = 0;
    dev.pending = 0;                    /* before reaping: no lost wake-up */
    while ((b = virtq_get(&rxq, &len))) {
        if (len > NET_HDR_LEN) {
            uint16_t flen = (uint16_t)(len - NET_HDR_LEN);
            struct pbuf *p = pbuf_alloc(PBUF_RAW, flen, PBUF_POOL);
            if (p) {
                pbuf_take(p, b->frame, flen);
                if (n->input(p, n) != ERR_OK)
                    pbuf_free(p);
            }
        }
        rx_post(b);
        posted = 1;
    }
    if (posted)
        kick(&rxq);
    tx_reclaim();
}

err_t vnet_netif_init(struct netif *n)
{
    n->name[0] = 'v';
    n->name[1] = 'n';
    n->output = etharp_output;
    n->linkoutput = linkoutput;
    n->mtu = 1500;
    n->hwaddr_len = 6;
    memcpy(n->hwaddr, mac, 6);
    n->flags = NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET |
               NETIF_FLAG_LINK_UP;
    return ERR_OK;
}
