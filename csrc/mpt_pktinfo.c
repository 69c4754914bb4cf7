#define _GNU_SOURCE /* struct in6_pktinfo */
#include <string.h>
#include <netinet/in.h>
#include "mpt_pktinfo.h"

void mpt_pktinfo_parse(struct msghdr *m, struct mpt_local *out)
{
    struct cmsghdr *c;
    out->family = 0;
    for (c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            out->family = 4;
            memcpy(out->addr, &pi.ipi_addr, 4);
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
                   c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            if (IN6_IS_ADDR_V4MAPPED(&pi.ipi6_addr)) {
                out->family = 4;
                memcpy(out->addr, &pi.ipi6_addr.s6_addr[12], 4);
            } else {
                out->family = 6;
                memcpy(out->addr, &pi.ipi6_addr, 16);
            }
        }
    }
}

size_t mpt_pktinfo_build(const struct mpt_local *l, uint8_t *buf, size_t cap)
{
    struct msghdr m;
    struct cmsghdr *c;
    memset(&m, 0, sizeof(m));
    memset(buf, 0, cap);
    m.msg_control = buf;
    if (l->family == 4) {
        struct in_pktinfo pi;
        if (cap < CMSG_SPACE(sizeof(pi)))
            return 0;
        memset(&pi, 0, sizeof(pi));
        memcpy(&pi.ipi_spec_dst, l->addr, 4);
        m.msg_controllen = CMSG_SPACE(sizeof(pi));
        c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(pi));
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
        return CMSG_SPACE(sizeof(pi));
    }
    if (l->family == 6) {
        struct in6_pktinfo pi;
        if (cap < CMSG_SPACE(sizeof(pi)))
            return 0;
        memset(&pi, 0, sizeof(pi));
        memcpy(&pi.ipi6_addr, l->addr, 16);
        m.msg_controllen = CMSG_SPACE(sizeof(pi));
        c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(pi));
        memcpy(CMSG_DATA(c), &pi, sizeof(pi));
        return CMSG_SPACE(sizeof(pi));
    }
    return 0;
}
