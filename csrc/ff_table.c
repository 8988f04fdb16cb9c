#include "ff_table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Everything that changes an instance's state is checked against this table. */
static const unsigned char allowed[FF_NSTATES][FF_NSTATES] = {
    [FF_FREE] = {[FF_SPAWNING] = 1},
    [FF_SPAWNING] = {[FF_IDLE] = 1, [FF_BUSY] = 1, [FF_DEAD] = 1},
    [FF_IDLE] = {[FF_BUSY] = 1, [FF_DRAINING] = 1, [FF_DEAD] = 1},
    [FF_BUSY] = {[FF_IDLE] = 1, [FF_DRAINING] = 1, [FF_DEAD] = 1},
    [FF_DRAINING] = {[FF_DEAD] = 1},
    [FF_DEAD] = {[FF_FREE] = 1},
};

int ff_table_transition_ok(int from, int to)
{
    if (from < 0 || from >= FF_NSTATES || to < 0 || to >= FF_NSTATES)
        return 0;
    return allowed[from][to];
}

int ff_table_init(struct ff_table *t)
{
    memset(t, 0, sizeof *t);
    t->free_head = -1;
    return 0;
}

void ff_table_free(struct ff_table *t)
{
    free(t->nodes);
    free(t->slots);
    memset(t, 0, sizeof *t);
    t->free_head = -1;
}

static int grow_nodes(struct ff_table *t)
{
    int32_t n = t->n_nodes ? t->n_nodes * 2 : 64, i;
    struct ff_node *nodes = realloc(t->nodes, (size_t)n * sizeof *nodes);
    if (!nodes)
        return -ENOMEM;
    for (i = n - 1; i >= t->n_nodes; i--) {
        memset(&nodes[i], 0, sizeof nodes[i]);
        nodes[i].slot = -1;
        nodes[i].next = t->free_head;
        t->free_head = i;
    }
    t->nodes = nodes;
    t->n_nodes = n;
    return 0;
}

int32_t ff_table_slot_new(struct ff_table *t)
{
    int32_t i, n;
    struct ff_slot *slots;
    for (i = 0; i < t->n_slots; i++)
        if (!t->slots[i].used)
            goto found;
    n = t->n_slots ? t->n_slots * 2 : 16;
    slots = realloc(t->slots, (size_t)n * sizeof *slots);
    if (!slots)
        return -ENOMEM;
    memset(&slots[t->n_slots], 0, (size_t)(n - t->n_slots) * sizeof *slots);
    i = t->n_slots;
    t->slots = slots;
    t->n_slots = n;
found:
    memset(&t->slots[i], 0, sizeof t->slots[i]);
    t->slots[i].head[0] = t->slots[i].head[1] = -1;
    t->slots[i].tail[0] = t->slots[i].tail[1] = -1;
    t->slots[i].used = 1;
    return i;
}

static int slot_ok(const struct ff_table *t, int32_t slot)
{
    return slot >= 0 && slot < t->n_slots && t->slots[slot].used;
}

static int id_ok(const struct ff_table *t, int32_t id)
{
    return id >= 0 && id < t->n_nodes && t->nodes[id].state != FF_FREE;
}

int ff_table_slot_release(struct ff_table *t, int32_t slot)
{
    struct ff_slot *s;
    int st;
    if (!slot_ok(t, slot))
        return -EINVAL;
    s = &t->slots[slot];
    for (st = FF_SPAWNING; st < FF_DEAD; st++)
        if (s->count[st])
            return -EBUSY;
    s->used = 0;
    return 0;
}

int32_t ff_table_add(struct ff_table *t, int32_t slot)
{
    int32_t id;
    struct ff_node *n;
    if (!slot_ok(t, slot))
        return -EINVAL;
    if (t->free_head < 0 && grow_nodes(t) < 0)
        return -ENOMEM;
    id = t->free_head;
    n = &t->nodes[id];
    t->free_head = n->next;
    n->prev = n->next = -1;
    n->slot = slot;
    n->state = FF_SPAWNING;
    n->kind = FF_SPARE;
    n->last_used = 0;
    t->slots[slot].count[FF_SPAWNING]++;
    return id;
}

static void unlink_idle(struct ff_table *t, int32_t id)
{
    struct ff_node *n = &t->nodes[id];
    struct ff_slot *s = &t->slots[n->slot];
    int k = n->kind;
    if (n->prev >= 0)
        t->nodes[n->prev].next = n->next;
    else
        s->head[k] = n->next;
    if (n->next >= 0)
        t->nodes[n->next].prev = n->prev;
    else
        s->tail[k] = n->prev;
    n->prev = n->next = -1;
    s->n_idle[k]--;
}

static void push_idle(struct ff_table *t, int32_t id, int kind)
{
    struct ff_node *n = &t->nodes[id];
    struct ff_slot *s = &t->slots[n->slot];
    n->kind = (uint8_t)kind;
    n->prev = -1;
    n->next = s->head[kind];
    if (s->head[kind] >= 0)
        t->nodes[s->head[kind]].prev = id;
    else
        s->tail[kind] = id;
    s->head[kind] = id;
    s->n_idle[kind]++;
}

int ff_table_set_state(struct ff_table *t, int32_t id, int state, int kind, double now)
{
    struct ff_node *n;
    struct ff_slot *s;
    if (!id_ok(t, id) || (kind != FF_WARM && kind != FF_SPARE))
        return -EINVAL;
    n = &t->nodes[id];
    if (!ff_table_transition_ok(n->state, state))
        return -EPERM;
    s = &t->slots[n->slot];
    if (n->state == FF_IDLE)
        unlink_idle(t, id);
    s->count[n->state]--;
    if (state == FF_FREE) {
        n->state = FF_FREE;
        n->slot = -1;
        n->next = t->free_head;
        t->free_head = id;
        return 0;
    }
    n->state = (uint8_t)state;
    s->count[state]++;
    if (state == FF_IDLE) {
        n->last_used = now;
        push_idle(t, id, kind);
    }
    return 0;
}

int32_t ff_table_acquire(struct ff_table *t, int32_t slot, int *kind)
{
    struct ff_slot *s;
    int k;
    if (!slot_ok(t, slot))
        return -EINVAL;
    s = &t->slots[slot];
    for (k = FF_WARM; k <= FF_SPARE; k++) {
        int32_t id = s->head[k];
        if (id >= 0) {
            unlink_idle(t, id);
            s->count[FF_IDLE]--;
            s->count[FF_BUSY]++;
            t->nodes[id].state = FF_BUSY;
            *kind = k;
            return id;
        }
    }
    return -1;
}

int32_t ff_table_pop_expired(struct ff_table *t, int32_t slot, int kind, double cutoff)
{
    struct ff_slot *s;
    int32_t id;
    if (!slot_ok(t, slot) || (kind != FF_WARM && kind != FF_SPARE))
        return -EINVAL;
    s = &t->slots[slot];
    id = s->tail[kind];
    if (id < 0 || t->nodes[id].last_used > cutoff)
        return -1;
    unlink_idle(t, id);
    s->count[FF_IDLE]--;
    s->count[FF_DRAINING]++;
    t->nodes[id].state = FF_DRAINING;
    return id;
}

int ff_table_state(const struct ff_table *t, int32_t id)
{
    if (id < 0 || id >= t->n_nodes)
        return -EINVAL;
    return t->nodes[id].state;
}

int ff_table_count(const struct ff_table *t, int32_t slot, int state)
{
    if (!slot_ok(t, slot) || state < 0 || state >= FF_NSTATES)
        return -EINVAL;
    return t->slots[slot].count[state];
}

int ff_table_idle(const struct ff_table *t, int32_t slot, int kind)
{
    if (!slot_ok(t, slot) || (kind != FF_WARM && kind != FF_SPARE))
        return -EINVAL;
    return t->slots[slot].n_idle[kind];
}
