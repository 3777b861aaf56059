/*
 * thinsim/model/_space_map.c: the common cases of LowLevel.add_many
 * (thinsim/model/space_map.py) in C; and, at the end, two loops of the copy-on-write
 * path's runs: Pool._leaf_gather's (pool.py: leaf_gather) and the walk of
 * PoolMetadata.overwrite_leaf (metadata.py: overwrite_walk), each with its Python loop
 * the reference and the fallback.
 *
 * add_many(blocks, delta) sets the reference count of each block in turn to its
 * count + delta, as sm_ll_mutate would (dm-space-map-common.c).  When a mapping leaf
 * is copied after a snapshot, each of its ~250 data blocks gets +1: nearly all of them
 * in bitmaps already shadowed in this transaction, with counts of 3 and more set in
 * place in reference-count btree leaves shadowed already.  Those cases are done here,
 * on the space map's own Python objects (bytearrays and arrays written in place),
 * block after block, and so is the walk down the reference-count tree that finds such
 * a leaf (BTreeInfo.leaf_in_place, kept in add_many's table).  The first block that
 * needs anything else is left to Python, which is the reference: run() returns its
 * position and why it stopped there -- an ie-cache slot to take back (the caller's
 * _index_changed, then run() again from that block), a key to insert through
 * BTreeInfo.insert (no leaf in place, or a full one: the caller's _insert_big), or
 * anything else (a bitmap to shadow, a removal, a count beyond those done here: the
 * Python loop does that one block) -- and run() goes on from the next.
 *
 * Nothing is changed for a block unless all of its changes are made here.  Every
 * condition is checked against the live objects each time (no table of addresses is
 * kept between calls), so no state can go stale: a commit, a rollback or a metadata
 * read that replaces an object is seen at the next call.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ENTRIES_PER_BITMAP 16320
#define IE_CACHE_SIZE 64
/*
 * The bitmaps and reference-count leaves one run() keeps at hand.  A copied mapping
 * leaf's blocks were written on as many days as its thin has had snapshots, each day's
 * in that day's bitmaps and reference-count leaves: block after block they take turns.
 * Nothing but run() itself changes these objects while it runs, so what it found ready
 * for one block stays ready for the next (but for the ie-cache slot, which run() keeps
 * track of itself: owner).
 */
#define RUN_BITMAPS 128
#define RUN_LEAVES 128

/* why run() stopped at a block (space_map.py: LowLevel.add_many) */
enum {
	STOP_END,	/* at the end of blocks */
	STOP_SLOT,	/* its bitmap, ready but for its ie-cache slot, held by another */
	STOP_LEAF,	/* ready but for its ref-count leaf, not kept (yet) */
	STOP_OTHER,	/* anything else: Python's loop does the block */
	STOP_INSERT,	/* ready but for its key, which goes through BTreeInfo.insert */
	STOP_RAISED,	/* its leaf's shadow raised: the error is returned, to be raised */
};

/* interned attribute and method names (module init) */
static PyObject *s_keys, *s_values, *s_max_entries, *s_get, *s_insert, *s_leaf, *dict_get;
static PyObject *two_to_64;	/* a range's end with no key above it */

/* dm-space-map-common.c: hash_index (space_map.py: ie_slot) */
static uint64_t ie_slot(uint64_t index)
{
	return ((index * 4294967291ULL) & 0xFFFFFFFFULL) & (IE_CACHE_SIZE - 1);
}

/*
 * Whether container.get is dict.get (a dict, or a subclass such as the transaction
 * manager's BlockCache that does not define its own ``get``: its __missing__ is not
 * called by get), so that it can be read directly.  -1 on an error.
 */
static int plain_get(PyObject *container)
{
	PyObject *get;
	int r;

	if (PyDict_CheckExact(container))
		return 1;
	if (!PyDict_Check(container))
		return 0;
	get = PyObject_GetAttr((PyObject *)Py_TYPE(container), s_get);
	if (!get)
		return -1;
	r = get == dict_get;
	Py_DECREF(get);
	return r;
}

/*
 * container.get(key) as a new reference (NULL and no error if absent; NULL and an
 * error if the lookup raised): a dict read directly if ``plain``, anything else
 * through its own ``get``.
 */
static PyObject *get_item(PyObject *container, PyObject *key, int plain)
{
	PyObject *v;

	if (plain) {
		v = PyDict_GetItemWithError(container, key);
		Py_XINCREF(v);
		return v;
	}
	v = PyObject_CallMethodOneArg(container, s_get, key);
	if (v == Py_None) {
		Py_DECREF(v);
		return NULL;
	}
	return v;
}

static PyObject *get_item_u64(PyObject *container, uint64_t key, int plain)
{
	PyObject *k = PyLong_FromUnsignedLongLong(key), *v;

	if (!k)
		return NULL;
	v = get_item(container, k, plain);
	Py_DECREF(k);
	return v;
}

/* a Python int as a u64; 0 with *ok cleared (and no error set) if it is not one */
static uint64_t as_u64(PyObject *o, int *ok)
{
	uint64_t v;

	if (!PyLong_Check(o)) {
		*ok = 0;
		return 0;
	}
	v = PyLong_AsUnsignedLongLong(o);
	if (v == (uint64_t)-1 && PyErr_Occurred()) {
		PyErr_Clear();
		*ok = 0;
		return 0;
	}
	return v;
}

/* a writable buffer of n items of itemsize bytes (n < 0: any length), or 0 */
static int get_buffer(PyObject *o, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t n)
{
	if (PyObject_GetBuffer(o, view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
		PyErr_Clear();
		return 0;
	}
	if (view->itemsize != itemsize || (n >= 0 && view->len != n * itemsize)) {
		PyBuffer_Release(view);
		return 0;
	}
	return 1;
}

/* the bitmap in use: its entries (min(count, 3)), big counts and old codes */
struct bitmap {
	int64_t index;		/* -1: none */
	uint64_t base;		/* its first block */
	PyObject *map, *codes, *big;	/* new references (big: NULL if none) */
	uint8_t *m, *oc;
	uint32_t *bm;		/* NULL if the bitmap has no big counts yet */
	Py_buffer bv;
	int leaf;		/* run(): the leaf at hand its last block of 3 and more went to */
};

static void bitmap_put(struct bitmap *bmp)
{
	if (bmp->index < 0)
		return;
	if (bmp->big) {
		PyBuffer_Release(&bmp->bv);
		Py_DECREF(bmp->big);
	}
	Py_DECREF(bmp->map);
	Py_DECREF(bmp->codes);
	bmp->index = -1;
}

/* the objects add_many works on, as run() gets them */
struct lowlevel {
	PyObject *maps, *shadows, *dirty, *codes, *bigs, *los, *leaves, *held;
	PyObject *mmaps;	/* the metadata space map's maps */
	PyObject *same;		/* _wb_same (a dict), or None where it does not hold now */
	PyObject *shadow;	/* _shadow_ref_leaf, or None where the walks may not shadow */
	int64_t owner[IE_CACHE_SIZE];	/* the bitmap index each slot holds, -1 unknown */
	uint64_t ref_root;
	int kept;		/* a leaf was added to the kept table */
	int plain_dirty, plain_codes, plain_bigs, plain_held;	/* plain_get */
	uint64_t *bitmaps;
	Py_ssize_t nr_bitmaps;
};

/* the error set, as an exception object (cleared) */
static PyObject *raised(void)
{
	PyObject *type, *value, *tb;

	PyErr_Fetch(&type, &value, &tb);
	PyErr_NormalizeException(&type, &value, &tb);
	if (value && tb)
		PyException_SetTraceback(value, tb);
	Py_XDECREF(type);
	Py_XDECREF(tb);
	return value ? value : Py_NewRef(PyExc_SystemError);
}

/*
 * Whether bitmap ``y``'s index entry is one _writeback would find set in place already
 * (ll->same[y] is its bitmap block): 1 if so, 0 if not, -1 on an error.
 */
static int written_same(struct lowlevel *ll, uint64_t y)
{
	PyObject *v;
	uint64_t blk;
	int ok = 1;

	if (ll->same == Py_None || y >= (uint64_t)ll->nr_bitmaps)
		return 0;
	v = get_item_u64(ll->same, y, 1);
	if (!v)
		return PyErr_Occurred() ? -1 : 0;
	blk = as_u64(v, &ok);
	Py_DECREF(v);
	return ok && blk == ll->bitmaps[y];
}

/* dict[key] = value for ints: 1, or -1 on an error */
static int dict_set_u64(PyObject *dict, uint64_t key, uint64_t value)
{
	PyObject *k = PyLong_FromUnsignedLongLong(key), *v;
	int r = -1;

	if (!k)
		return -1;
	v = PyLong_FromUnsignedLongLong(value);
	if (v) {
		r = PyDict_SetItem(dict, k, v) < 0 ? -1 : 1;
		Py_DECREF(v);
	}
	Py_DECREF(k);
	return r;
}

/*
 * Bitmap ``index``'s entry made the one its ie-cache slot holds, where that needs
 * nothing of Python's: held there already, or (_index_changed) the slot taken after
 * the writeback of the entry it holds, where that changes nothing: an empty slot, or
 * an entry _writeback finds set in place already (_wb_same).  Taking the slot is the
 * first thing Python would do for the block too, whatever comes after.  1 if held
 * now, 2 if Python must take the slot, -1 on an error.
 */
static int take_slot(struct lowlevel *ll, uint64_t index)
{
	uint64_t slot = ie_slot(index), in_slot;
	PyObject *held;
	int r, ok = 1;

	if (ll->owner[slot] == (int64_t)index)
		return 1;
	held = get_item_u64(ll->dirty, slot, ll->plain_dirty);
	if (!held && PyErr_Occurred())
		return -1;
	in_slot = held ? as_u64(held, &ok) : 0;
	Py_XDECREF(held);
	if (ok && held && in_slot == index) {
		ll->owner[slot] = index;
		return 1;
	}
	r = ok && PyDict_CheckExact(ll->dirty) && (!held || written_same(ll, in_slot));
	if (r == 1)
		r = dict_set_u64(ll->dirty, slot, index);
	if (r == 1)
		ll->owner[slot] = index;
	return r < 0 ? -1 : (r == 1 ? 1 : 2);
}

/*
 * Bitmap ``index`` made the one in use if a block of it needs nothing of Python's
 * first meeting with it in add_many: its bitmap block a shadow of this transaction,
 * its index entry in its ie-cache slot (shadow_bitmap and disk_ll_save_ie change
 * nothing), its entries and its old codes made already.  1 if so, 2 if so but for
 * its ie-cache slot, 0 if not, -1 on an error.
 */
static int bitmap_get(struct lowlevel *ll, uint64_t index, struct bitmap *bmp)
{
	PyObject *map, *blk, *codes, *big;
	int r;

	if (index >= (uint64_t)PyList_GET_SIZE(ll->maps) || index >= (uint64_t)ll->nr_bitmaps)
		return 0;
	map = PyList_GET_ITEM(ll->maps, index);
	if (!PyByteArray_CheckExact(map) || PyByteArray_GET_SIZE(map) != ENTRIES_PER_BITMAP)
		return 0;
	blk = PyLong_FromUnsignedLongLong(ll->bitmaps[index]);
	if (!blk)
		return -1;
	r = PySet_CheckExact(ll->shadows) ? PySet_Contains(ll->shadows, blk)
					   : PySequence_Contains(ll->shadows, blk);
	Py_DECREF(blk);
	if (r <= 0)
		return r;
	codes = get_item_u64(ll->codes, index, ll->plain_codes);
	if (!codes)
		return PyErr_Occurred() ? -1 : 0;
	if (!PyByteArray_CheckExact(codes) || PyByteArray_GET_SIZE(codes) != ENTRIES_PER_BITMAP) {
		Py_DECREF(codes);
		return 0;
	}
	r = take_slot(ll, index);
	if (r != 1) {
		Py_DECREF(codes);
		return r;
	}
	big = get_item_u64(ll->bigs, index, ll->plain_bigs);
	if (!big && PyErr_Occurred()) {
		Py_DECREF(codes);
		return -1;
	}
	bmp->bm = NULL;
	if (big) {
		if (!get_buffer(big, &bmp->bv, 4, ENTRIES_PER_BITMAP)) {
			Py_DECREF(big);
			Py_DECREF(codes);
			return 0;
		}
		bmp->bm = bmp->bv.buf;
	}
	Py_INCREF(map);
	bmp->map = map;
	bmp->codes = codes;
	bmp->big = big;
	bmp->m = (uint8_t *)PyByteArray_AS_STRING(map);
	bmp->oc = (uint8_t *)PyByteArray_AS_STRING(codes);
	bmp->index = index;
	bmp->base = index * ENTRIES_PER_BITMAP;
	return 1;
}

/* the reference-count leaf in use: one of those add_many keeps (_ref_los/_ref_leaves) */
struct leaf {
	PyObject *node, *keys, *values;	/* new references; node NULL: none */
	PyObject *block;	/* a new reference: its block number (node's key in held) */
	Py_buffer kv, vv;
	int live;		/* kv and vv held (by this run() call only: Python resizes) */
	uint64_t *k, *v;
	uint64_t lo, hi;	/* its keys' range [lo, hi); hi 2^64 kept as UINT64_MAX */
	Py_ssize_t nkeys, max_entries, at;
};

static void leaf_release(struct leaf *lf)
{
	PyBuffer_Release(&lf->kv);
	PyBuffer_Release(&lf->vv);
	lf->live = 0;
}

static int leaf_acquire(struct leaf *lf)
{
	if (!get_buffer(lf->keys, &lf->kv, 8, -1))
		return 0;
	if (!get_buffer(lf->values, &lf->vv, 8, lf->kv.len / 8)) {
		PyBuffer_Release(&lf->kv);
		return 0;
	}
	lf->k = lf->kv.buf;
	lf->v = lf->vv.buf;
	lf->nkeys = lf->kv.len / 8;
	lf->live = 1;
	return 1;
}

static void leaf_put(struct leaf *lf)
{
	if (!lf->node)
		return;
	if (lf->live)
		leaf_release(lf);
	Py_DECREF(lf->keys);
	Py_DECREF(lf->values);
	Py_DECREF(lf->node);
	Py_CLEAR(lf->block);
	lf->node = NULL;
}

/*
 * Leaf ``node`` of block ``block`` (both borrowed), its keys in [lo, hi), made the one
 * in use: 1, 0 if its arrays give no u64 buffers, -1 on an error.
 */
static int leaf_take(struct leaf *lf, PyObject *node, PyObject *block, uint64_t lo, uint64_t hi)
{
	PyObject *max;
	Py_ssize_t max_entries;

	lf->keys = PyObject_GetAttr(node, s_keys);
	lf->values = lf->keys ? PyObject_GetAttr(node, s_values) : NULL;
	max = lf->values ? PyObject_GetAttr(node, s_max_entries) : NULL;
	max_entries = max ? PyLong_AsSsize_t(max) : -1;
	Py_XDECREF(max);
	if ((max_entries == -1 && PyErr_Occurred()) || !leaf_acquire(lf)) {
		Py_CLEAR(lf->keys);
		Py_CLEAR(lf->values);
		return PyErr_Occurred() ? -1 : 0;
	}
	lf->node = Py_NewRef(node);
	lf->block = Py_NewRef(block);
	lf->lo = lo;
	lf->hi = hi;
	lf->max_entries = max_entries;
	lf->at = 0;
	return 1;
}

/*
 * The kept leaf key ``b`` goes to in place, made the one in use, as add_many finds
 * it: the last kept range starting at or below b, if b is below its end and its
 * block's node is still that leaf.  1 if found, 0 if not, -1 on an error.
 */
static int leaf_get(struct lowlevel *ll, uint64_t b, struct leaf *lf)
{
	Py_ssize_t lo = 0, hi = PyList_GET_SIZE(ll->los), mid;
	PyObject *entry, *node, *now;
	uint64_t end, start;
	int ok = 1;

	/* bisect_right(los, b) - 1 */
	while (lo < hi) {
		mid = (lo + hi) / 2;
		if (b < as_u64(PyList_GET_ITEM(ll->los, mid), &ok))
			hi = mid;
		else
			lo = mid + 1;
		if (!ok)
			return 0;
	}
	if (lo == 0 || lo > PyList_GET_SIZE(ll->leaves))
		return 0;
	entry = PyList_GET_ITEM(ll->leaves, lo - 1);
	if (!PyList_Check(entry) || PyList_GET_SIZE(entry) < 4)
		return 0;
	start = as_u64(PyList_GET_ITEM(entry, 1), &ok);
	if (!ok)
		return 0;
	end = as_u64(PyList_GET_ITEM(entry, 2), &ok);
	if (!ok) {
		/* 2^64: the rightmost range */
		ok = 1;
		end = UINT64_MAX;
	}
	if (b >= end || b < start)
		return 0;
	node = PyList_GET_ITEM(entry, 0);
	now = get_item(ll->held, PyList_GET_ITEM(entry, 3), ll->plain_held);
	if (!now)
		return PyErr_Occurred() ? -1 : 0;
	Py_DECREF(now);
	if (now != node)
		return 0;
	return leaf_take(lf, node, PyList_GET_ITEM(entry, 3), start, end);
}

/* a u64 of an array('Q') at i (the caller checked i) */
static int array_u64(PyObject *array, Py_ssize_t i, uint64_t *v)
{
	Py_buffer view;

	if (!get_buffer(array, &view, 8, -1))
		return 0;
	if (i < 0 || i >= view.len / 8) {
		PyBuffer_Release(&view);
		return 0;
	}
	*v = ((uint64_t *)view.buf)[i];
	PyBuffer_Release(&view);
	return 1;
}

/*
 * btree.py: BTreeInfo.leaf_in_place for the reference-count tree, then kept as
 * LowLevel._kept_ref_leaf keeps it: the leaf key ``b`` goes to in place, walking down
 * from the root through nodes shadowed in this transaction with a metadata count of 1,
 * no internal node full.  1 if found and kept (made the one in use), 2 if the walk
 * says b's insert goes through BTreeInfo.insert, 0 if Python must walk (a node not in
 * core), -1 on an error, -2 if the leaf's shadow raised (the error set).
 *
 * A leaf not shadowed yet below a parent in place is shadowed here, where the caller
 * gave ll->shadow (LowLevel._shadow_ref_leaf: None where it declines): what
 * BTreeInfo.insert's walk (btree_insert_raw) does first for the key, its shadow_step of
 * the leaf and the parent repointed.  The leaf full, its insert goes on through
 * BTreeInfo.insert as before, which finds it shadowed already.
 */
static int leaf_walk(struct lowlevel *ll, uint64_t b, struct leaf *lf)
{
	uint64_t blk = ll->ref_root, lo = 0, hi = UINT64_MAX, *k;
	int unbounded = 1, r, isleaf;
	PyObject *key, *node, *m, *keys, *values, *max, *entry, *pvalues = NULL, *nb;
	Py_ssize_t nkeys, max_entries, i, j, nlos, l, h, mid, pi = -1;
	Py_buffer kv;
	int ok = 1;

	for (;;) {
		key = PyLong_FromUnsignedLongLong(blk);
		if (!key) {
			Py_XDECREF(pvalues);
			return -1;
		}
		r = PySet_CheckExact(ll->shadows) ? PySet_Contains(ll->shadows, key)
						   : PySequence_Contains(ll->shadows, key);
		if (r == 0 && pvalues && ll->shadow != Py_None) {
			uint64_t nblk;
			Py_buffer pv;

			nb = PyObject_CallOneArg(ll->shadow, key);
			if (!nb) {
				Py_DECREF(key);
				Py_DECREF(pvalues);
				return -2;
			}
			if (nb != Py_None) {
				nblk = as_u64(nb, &ok);
				if (!ok || !get_buffer(pvalues, &pv, 8, -1) || pi >= pv.len / 8) {
					/* not reached: Python's shadow gives an int, values a u64 array */
					if (ok)
						PyBuffer_Release(&pv);
					Py_DECREF(nb);
					Py_DECREF(key);
					Py_DECREF(pvalues);
					PyErr_SetString(PyExc_SystemError, "leaf_walk: the shadow's parent");
					return -2;
				}
				((uint64_t *)pv.buf)[pi] = nblk;	/* the parent repointed */
				PyBuffer_Release(&pv);
				Py_DECREF(nb);
				Py_DECREF(key);
				blk = nblk;
				continue;	/* the leaf, shadowed now */
			}
			Py_DECREF(nb);
		}
		Py_CLEAR(pvalues);
		if (r <= 0) {
			Py_DECREF(key);
			return r < 0 ? -1 : 2;
		}
		if ((uint64_t)(blk / ENTRIES_PER_BITMAP) >= (uint64_t)PyList_GET_SIZE(ll->mmaps)) {
			Py_DECREF(key);
			return 0;
		}
		m = PyList_GET_ITEM(ll->mmaps, blk / ENTRIES_PER_BITMAP);
		if (!PyByteArray_CheckExact(m) || PyByteArray_GET_SIZE(m) != ENTRIES_PER_BITMAP ||
		    PyByteArray_AS_STRING(m)[blk % ENTRIES_PER_BITMAP] != 1) {
			Py_DECREF(key);
			return PyByteArray_CheckExact(m) || m == Py_None ? 2 : 0;
		}
		node = get_item(ll->held, key, ll->plain_held);
		Py_DECREF(key);
		if (!node)
			return PyErr_Occurred() ? -1 : 0;	/* not in core: Python reads it */
		m = PyObject_GetAttr(node, s_leaf);
		if (!m) {
			Py_DECREF(node);
			return -1;
		}
		isleaf = PyObject_IsTrue(m);
		Py_DECREF(m);
		if (isleaf < 0) {
			Py_DECREF(node);
			return -1;
		}
		if (isleaf)
			break;
		keys = PyObject_GetAttr(node, s_keys);
		values = keys ? PyObject_GetAttr(node, s_values) : NULL;
		max = values ? PyObject_GetAttr(node, s_max_entries) : NULL;
		Py_DECREF(node);
		if (!max) {
			Py_XDECREF(keys);
			Py_XDECREF(values);
			return -1;
		}
		max_entries = PyLong_AsSsize_t(max);
		Py_DECREF(max);
		if ((max_entries == -1 && PyErr_Occurred()) || !get_buffer(keys, &kv, 8, -1)) {
			Py_DECREF(keys);
			Py_DECREF(values);
			return PyErr_Occurred() ? -1 : 0;
		}
		k = kv.buf;
		nkeys = kv.len / 8;
		/* bisect_right(keys, b) - 1 */
		l = 0;
		h = nkeys;
		while (l < h) {
			mid = (l + h) / 2;
			if (b < k[mid])
				h = mid;
			else
				l = mid + 1;
		}
		i = l - 1;
		if (nkeys == max_entries || i < 0) {
			PyBuffer_Release(&kv);
			Py_DECREF(keys);
			Py_DECREF(values);
			return 2;
		}
		lo = k[i];	/* a child's keys are at least its parent's key for it */
		if (i + 1 < nkeys && (unbounded || k[i + 1] < hi)) {
			hi = k[i + 1];
			unbounded = 0;
		}
		PyBuffer_Release(&kv);
		Py_DECREF(keys);
		r = array_u64(values, i, &blk);
		if (!r) {
			Py_DECREF(values);
			return 0;
		}
		pvalues = values;	/* kept: the child may be shadowed and repointed */
		pi = i;
	}

	/* keep it: replace the entry of a leaf read back since, or insert a new one */
	entry = Py_BuildValue("[OKNKii]", node, (unsigned long long)lo,
			      unbounded ? Py_NewRef(two_to_64) : PyLong_FromUnsignedLongLong(hi),
			      (unsigned long long)blk, 0, -1);
	if (!entry) {
		Py_DECREF(node);
		return -1;
	}
	nlos = PyList_GET_SIZE(ll->los);
	l = 0;
	h = nlos;
	while (l < h) {
		mid = (l + h) / 2;
		if (b < as_u64(PyList_GET_ITEM(ll->los, mid), &ok))
			h = mid;
		else
			l = mid + 1;
	}
	j = l - 1;
	if (!ok || nlos != PyList_GET_SIZE(ll->leaves)) {
		Py_DECREF(entry);
		Py_DECREF(node);
		return 0;
	}
	key = PyList_GET_ITEM(entry, 1);
	r = 0;
	if (j >= 0) {
		PyObject *old = PyList_GET_ITEM(ll->leaves, j);
		uint64_t end;

		if (!PyList_Check(old) || PyList_GET_SIZE(old) < 4) {
			Py_DECREF(entry);
			Py_DECREF(node);
			return 0;
		}
		end = as_u64(PyList_GET_ITEM(old, 2), &ok);
		r = !ok || b < end;	/* (2^64 does not fit: b is below it) */
		ok = 1;
	}
	if (r) {
		Py_INCREF(key);
		if (PyList_SetItem(ll->los, j, key) < 0 || PyList_SetItem(ll->leaves, j, entry) < 0) {
			Py_DECREF(node);
			return -1;
		}
	} else {
		r = PyList_Insert(ll->los, j + 1, key) < 0 || PyList_Insert(ll->leaves, j + 1, entry) < 0;
		Py_DECREF(entry);
		if (r) {
			Py_DECREF(node);
			return -1;
		}
	}
	ll->kept = 1;

	/* the kept table holds the entry now: its block number is the leaf's */
	r = leaf_take(lf, node, PyList_GET_ITEM(entry, 3), lo, unbounded ? UINT64_MAX : hi);
	Py_DECREF(node);
	return r;
}

/* array.insert(i, v) */
static PyObject *insert(PyObject *array, PyObject *i, uint64_t v)
{
	PyObject *args[3] = { array, i, PyLong_FromUnsignedLongLong(v) }, *r;

	if (!args[2])
		return NULL;
	r = PyObject_VectorcallMethod(s_insert, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
	Py_DECREF(args[2]);
	return r;
}

/* keys.insert(i, b) and values.insert(i, n), the buffers let go meanwhile */
static int leaf_insert(struct leaf *lf, Py_ssize_t i, uint64_t b, uint64_t n)
{
	PyObject *r, *at = PyLong_FromSsize_t(i);

	leaf_release(lf);
	r = at ? insert(lf->keys, at, b) : NULL;
	if (r) {
		Py_DECREF(r);
		r = insert(lf->values, at, n);
	}
	Py_XDECREF(at);
	if (!r || !leaf_acquire(lf)) {
		Py_XDECREF(r);
		/* the buffers are let go: forget the leaf without releasing them again */
		lf->live = 0;
		Py_DECREF(lf->keys);
		Py_DECREF(lf->values);
		Py_DECREF(lf->node);
		Py_CLEAR(lf->block);
		lf->node = NULL;
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_RuntimeError, "a leaf's arrays changed under add_many");
		return -1;
	}
	Py_DECREF(r);
	return 0;
}

/* the index of the first key >= b in the leaf (near the last one set, usually) */
static Py_ssize_t leaf_find(struct leaf *lf, uint64_t b)
{
	Py_ssize_t lo = 0, hi = lf->nkeys, mid, i = lf->at;

	/* runs of consecutive blocks are runs of consecutive keys */
	if (i + 1 < hi && lf->k[i] < b && lf->k[i + 1] >= b)
		return i + 1;
	if (i < hi && lf->k[i] >= b && (i == 0 || lf->k[i - 1] < b))
		return i;
	if (i < hi && lf->k[i] < b) {
		/*
		 * a little further on: the blocks of a copied leaf that one day wrote are
		 * keys of one reference-count leaf, with the day's blocks the thin has
		 * overwritten since between them
		 */
		Py_ssize_t end = i + 9 < hi ? i + 9 : hi;

		for (i++; i < end; i++)
			if (lf->k[i] >= b)
				return i;
		lo = i;
	}
	while (lo < hi) {
		mid = (lo + hi) / 2;
		if (lf->k[mid] < b)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * The bitmaps and reference-count leaves run() has at hand, kept from one call to the
 * next in a capsule the LowLevel holds (at_hand()): a transaction's calls meet the same
 * bitmaps and leaves again, leaf after leaf.
 *
 * What made a bitmap ready for run() holds until the transaction ends (its block a
 * shadow; its entries, old codes and big counts the same objects: only a commit or a
 * rollback replaces them), so the caller passes the LowLevel's transaction count (gen)
 * and a capsule of another one is emptied first.  The ie-cache slots are taken again at
 * each call (Python takes them between calls), and a bitmap that had no big counts is
 * looked at again (Python makes them between calls).
 *
 * A leaf is one of the kept table's (_ref_los), which holds while the table does: the
 * caller passes the count of times the table was emptied (lgen), and the leaves of
 * another are let go first; a removal lets go of those it changed (hand_drop).  At its
 * first use in a call a leaf is checked to be its block's node still (read back since,
 * it is another object) and its arrays' buffers are taken; they are let go when the
 * call returns, as Python may resize the arrays between calls.
 */
#define WHERE_SIZE 1024	/* where: a bitmap index modulo this -> its place + 1, or 0 */

struct at_hand {
	long long gen, lgen;
	int nb, next;
	int nl, next_lf;
	int64_t bidx[RUN_BITMAPS];
	uint16_t where[WHERE_SIZE];
	struct bitmap bmps[RUN_BITMAPS];
	/* the leaves' ranges side by side ([0, 0): none), then the leaves */
	uint64_t llo[RUN_LEAVES], lhi[RUN_LEAVES];
	struct leaf lfs[RUN_LEAVES];
};

static void leaves_empty(struct at_hand *h)
{
	int k;

	/* (a bitmap's leaf hint is checked against the ranges where it is used) */
	for (k = 0; k < h->nl; k++) {
		leaf_put(&h->lfs[k]);
		h->llo[k] = h->lhi[k] = 0;
	}
	h->nl = h->next_lf = 0;
}

static void at_hand_empty(struct at_hand *h)
{
	int k;

	leaves_empty(h);
	for (k = 0; k < RUN_BITMAPS; k++) {
		bitmap_put(&h->bmps[k]);
		h->bidx[k] = -1;
	}
	memset(h->where, 0, sizeof(h->where));
	h->nb = h->next = 0;
}

static void at_hand_free(PyObject *capsule)
{
	struct at_hand *h = PyCapsule_GetPointer(capsule, "thinsim.at_hand");

	if (h) {
		at_hand_empty(h);
		PyMem_Free(h);
	}
}

static PyObject *at_hand(PyObject *self, PyObject *unused)
{
	struct at_hand *h = PyMem_Calloc(1, sizeof(*h));
	PyObject *capsule;
	int k;

	if (!h)
		return PyErr_NoMemory();
	h->gen = h->lgen = -1;
	for (k = 0; k < RUN_BITMAPS; k++) {
		h->bmps[k].index = -1;
		h->bmps[k].leaf = -1;
		h->bidx[k] = -1;
	}
	capsule = PyCapsule_New(h, "thinsim.at_hand", at_hand_free);
	if (!capsule)
		PyMem_Free(h);
	return capsule;
}

/*
 * hand_drop(hand, lo, hi): the leaves at hand whose ranges meet keys [lo, hi) let go
 * (LowLevel._ref_remove: the leaves a removal changed, as it drops them from the kept
 * table).  hi may be 2^64.
 */
static PyObject *hand_drop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct at_hand *h;
	uint64_t lo, hi;
	int k, overflow = 0;

	if (nargs != 3) {
		PyErr_SetString(PyExc_TypeError, "hand_drop() takes 3 arguments");
		return NULL;
	}
	h = PyCapsule_GetPointer(args[0], "thinsim.at_hand");
	if (!h)
		return NULL;
	lo = PyLong_AsUnsignedLongLong(args[1]);
	if (PyErr_Occurred())
		return NULL;
	if (PyLong_Check(args[2]) && PyLong_AsLongLongAndOverflow(args[2], &overflow) && overflow > 0) {
		hi = UINT64_MAX;	/* 2^64, as the ranges keep it */
	} else {
		hi = PyLong_AsUnsignedLongLong(args[2]);
		if (PyErr_Occurred())
			return NULL;
	}
	for (k = 0; k < h->nl; k++)
		if (h->llo[k] != h->lhi[k] && h->llo[k] < hi && lo < h->lhi[k]) {
			leaf_put(&h->lfs[k]);
			h->llo[k] = h->lhi[k] = 0;
		}
	Py_RETURN_NONE;
}

/* the place of bitmap ``index`` at hand, or -1 */
static int hand_find(struct at_hand *h, int64_t index)
{
	int k = h->where[index % WHERE_SIZE] - 1;

	if (k >= 0 && h->bidx[k] == index)
		return k;
	for (k = 0; k < h->nb; k++)
		if (h->bidx[k] == index) {
			h->where[index % WHERE_SIZE] = k + 1;
			return k;
		}
	return -1;
}

/*
 * Leaf k at hand made ready for this call, where it is its block's node still: 1 if
 * so, 0 if not (it is let go), -1 on an error.
 */
static int leaf_ready(struct lowlevel *ll, struct at_hand *h, int k)
{
	struct leaf *lf = &h->lfs[k];
	PyObject *now;

	if (lf->live)
		return 1;
	now = get_item(ll->held, lf->block, ll->plain_held);
	if (!now && PyErr_Occurred())
		return -1;
	Py_XDECREF(now);
	if (now == lf->node && leaf_acquire(lf))
		return 1;
	leaf_put(lf);
	h->llo[k] = h->lhi[k] = 0;
	return 0;
}

/* a bitmap at hand that had no big counts: its array, where Python has made one since */
static int bitmap_big_again(struct lowlevel *ll, struct bitmap *bmp)
{
	PyObject *big = get_item_u64(ll->bigs, bmp->index, ll->plain_bigs);

	if (!big)
		return PyErr_Occurred() ? -1 : 0;
	if (!get_buffer(big, &bmp->bv, 4, ENTRIES_PER_BITMAP)) {
		Py_DECREF(big);
		return 0;
	}
	bmp->big = big;
	bmp->bm = bmp->bv.buf;
	return 0;
}

/*
 * run(start, blocks, delta, maps, bitmaps, shadows, dirty, codes, bigs, los, leaves,
 *     held, mmaps, ref_root, same, shadow, hand, gen, lgen, shift)
 *     -> (stop, why, old_n, big_n, nr_allocated, kept, error)
 *
 * add_many's loop over blocks[start:] (a list of ints, or a buffer of u64: a mapping
 * leaf's values as they are; each item shifted right by ``shift`` is a block number),
 * up to the first block it leaves to Python (stop; len(blocks) if none), for the reason
 * ``why`` (STOP_*: nothing of that block is done).  kept: a leaf was added to the kept
 * table (the caller sets _ref_at).  The caller adds old_n, big_n, nr_allocated to ``old.n``,
 * ``big.n`` and ``nr_allocated``.  Its arguments are the LowLevel's maps, bitmaps,
 * tm.shadows, dirty, old.codes, big.arrays, _ref_los, _ref_leaves, tm.blocks, the
 * metadata space map's maps and ref_root, _wb_same where it holds (else None), the
 * capsule at hand, and the counts of transactions and of kept tables (at_hand); the
 * caller has checked what add_many checks once a call (no queued metadata counts,
 * the kept leaves of this tree's shape and root, _wb_same of the index tree's).
 */
static PyObject *run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct lowlevel ll;
	struct at_hand *hand;
	struct bitmap *bmps, *bmp = NULL;
	struct leaf *lfs, *lf = NULL;
	int k;
	/* what the searches read, side by side: bitmap indexes, leaf ranges ([0, 0): none) */
	int64_t *bidx;
	uint64_t *llo, *lhi;
	long long gen, lgen, shift;
	Py_buffer bitmaps, bview;
	uint64_t *bbuf = NULL;	/* blocks' items, where blocks is a buffer */
	int is_buf = 0;
	PyObject *blocks;
	Py_ssize_t start, i, n, pos;
	long long delta, d_old = 0, d_big = 0, d_alloc = 0;
	int ok, r = 0, why = STOP_OTHER;
	PyObject *error = NULL;	/* STOP_RAISED's */

	if (nargs != 20) {
		PyErr_SetString(PyExc_TypeError, "run() takes 20 arguments");
		return NULL;
	}
	start = PyLong_AsSsize_t(args[0]);
	delta = PyLong_AsLongLong(args[2]);
	if (PyErr_Occurred())
		return NULL;
	blocks = args[1];
	ll.maps = args[3];
	ll.shadows = args[5];
	ll.dirty = args[6];
	ll.codes = args[7];
	ll.bigs = args[8];
	ll.los = args[9];
	ll.leaves = args[10];
	ll.held = args[11];
	ll.mmaps = args[12];
	ll.ref_root = PyLong_AsUnsignedLongLong(args[13]);
	ll.same = PyDict_CheckExact(args[14]) ? args[14] : Py_None;
	ll.shadow = args[15];
	hand = PyCapsule_GetPointer(args[16], "thinsim.at_hand");
	gen = PyLong_AsLongLong(args[17]);
	lgen = PyLong_AsLongLong(args[18]);
	shift = PyLong_AsLongLong(args[19]);
	if (!hand || PyErr_Occurred())
		return NULL;
	if (shift < 0 || shift > 63) {
		PyErr_SetString(PyExc_ValueError, "run(): shift is 0 to 63");
		return NULL;
	}
	if (hand->gen != gen) {
		at_hand_empty(hand);
		hand->gen = gen;
	}
	if (hand->lgen != lgen) {
		leaves_empty(hand);
		hand->lgen = lgen;
	}
	bmps = hand->bmps;
	bidx = hand->bidx;
	lfs = hand->lfs;
	llo = hand->llo;
	lhi = hand->lhi;
	ll.kept = 0;
	if (PyErr_Occurred())
		return NULL;
	if ((ll.plain_dirty = plain_get(ll.dirty)) < 0 || (ll.plain_codes = plain_get(ll.codes)) < 0 ||
	    (ll.plain_bigs = plain_get(ll.bigs)) < 0 || (ll.plain_held = plain_get(ll.held)) < 0)
		return NULL;
	if (!PyList_Check(ll.maps) || !PyList_Check(ll.los) || !PyList_Check(ll.leaves) ||
	    !PyList_Check(ll.mmaps)) {
		PyErr_SetString(PyExc_TypeError, "run(): maps, los, leaves and mmaps are lists");
		return NULL;
	}
	if (!PyList_Check(blocks)) {
		/* a leaf's values, as they are: no int object made for each */
		if (PyObject_GetBuffer(blocks, &bview, PyBUF_FORMAT) < 0)
			return NULL;
		if (bview.itemsize != 8 || !bview.format ||
		    !strchr("QL", bview.format[strlen(bview.format) - 1])) {
			PyBuffer_Release(&bview);
			PyErr_SetString(PyExc_TypeError, "run(): blocks is a list or a buffer of u64");
			return NULL;
		}
		bbuf = bview.buf;
		is_buf = 1;
	}
	if (PyObject_GetBuffer(args[4], &bitmaps, PyBUF_FORMAT) < 0) {
		if (is_buf)
			PyBuffer_Release(&bview);
		return NULL;
	}
	if (bitmaps.itemsize != 8) {
		PyBuffer_Release(&bitmaps);
		if (is_buf)
			PyBuffer_Release(&bview);
		PyErr_SetString(PyExc_TypeError, "run(): bitmaps is an array('Q')");
		return NULL;
	}
	ll.bitmaps = bitmaps.buf;
	ll.nr_bitmaps = bitmaps.len / 8;
	for (k = 0; k < IE_CACHE_SIZE; k++)
		ll.owner[k] = -1;

	n = is_buf ? bview.len / 8 : PyList_GET_SIZE(blocks);
	for (i = start; i < n; i++) {
		uint64_t b, e, o, index;
		long long nn;
		uint8_t c;
		int keep;

		ok = 1;
		b = is_buf ? bbuf[i] : as_u64(PyList_GET_ITEM(blocks, i), &ok);
		if (!ok)
			break;
		b >>= shift;
		index = b / ENTRIES_PER_BITMAP;
		if (!bmp || (int64_t)index != bmp->index) {
			/* one kept at hand, its slot taken again if another took it */
			k = hand_find(hand, index);
			if (k >= 0) {
				r = take_slot(&ll, index);
				bmp = r == 1 ? &bmps[k] : NULL;
				if (bmp && !bmp->bm && bitmap_big_again(&ll, bmp) < 0)
					r = -1;
			} else {
				k = hand->next;
				hand->next = (hand->next + 1) % RUN_BITMAPS;
				if (hand->nb < RUN_BITMAPS)
					hand->nb++;
				bmp = &bmps[k];
				if (bidx[k] >= 0 && hand->where[bidx[k] % WHERE_SIZE] == k + 1)
					hand->where[bidx[k] % WHERE_SIZE] = 0;
				bitmap_put(bmp);
				r = bitmap_get(&ll, index, bmp);
				bidx[k] = bmp->index;
				if (bmp->index >= 0)
					hand->where[bmp->index % WHERE_SIZE] = k + 1;
				if (r != 1)
					bmp = NULL;
				else
					bmp->leaf = -1;
			}
			if (r != 1) {
				if (r == 2)
					why = STOP_SLOT;
				break;
			}
		}
		e = b - bmp->base;
		c = bmp->m[e];
		if (c == 3) {
			if (!bmp->bm)
				break;
			o = bmp->bm[e];
		} else {
			o = c;
		}
		/* OldCounts.keep: counts of 254 and more go to a dict */
		keep = !bmp->oc[e];
		if (keep && o >= 254)
			break;
		nn = (long long)o + delta;
		if (nn > 2) {
			/* a count of 3 and more: the big counts and the ref-count leaf */
			if (nn > 0xFFFFFFFFLL || (o < 3 && !bmp->bm))
				break;
			if (!lf || b < lf->lo || b >= lf->hi) {
				/*
				 * one kept at hand (their ranges do not overlap): first the one this
				 * bitmap's last such block went to; or the kept table's
				 */
				k = bmp->leaf;
				if (k < 0 || k >= hand->nl || b < llo[k] || b >= lhi[k])
					for (k = 0; k < hand->nl; k++)
						if (b >= llo[k] && b < lhi[k])
							break;
				r = k < hand->nl ? leaf_ready(&ll, hand, k) : 0;
				if (r == 1) {
					lf = &lfs[k];
				} else if (r < 0) {
					break;
				} else {
					/* an empty place (a leaf let go), or the next in turn */
					if (k >= hand->nl || llo[k] != lhi[k]) {
						k = hand->next_lf;
						hand->next_lf = (hand->next_lf + 1) % RUN_LEAVES;
						if (hand->nl < RUN_LEAVES)
							hand->nl++;
					}
					lf = &lfs[k];
					leaf_put(lf);
					llo[k] = lhi[k] = 0;
					r = leaf_get(&ll, b, lf);
					if (r == 0)
						r = leaf_walk(&ll, b, lf);
					if (r == 1) {
						llo[k] = lf->lo;
						lhi[k] = lf->hi;
					}
					if (r == -2) {
						/*
						 * the leaf's shadow raised: what _insert_big had done
						 * for the block when its insert raised (its entry, big
						 * count and old count), then the error goes to Python
						 */
						lf = NULL;
						error = raised();
						bmp->m[e] = 3;
						if (o < 3)
							d_big++;
						bmp->bm[e] = nn;
						if (keep) {
							bmp->oc[e] = o + 1;
							d_old++;
						}
						r = 0;
						why = STOP_RAISED;
						break;
					}
					if (r != 1) {
						lf = NULL;
						if (r == 0)
							why = STOP_LEAF;
						else if (r == 2)
							why = STOP_INSERT;
						break;
					}
				}
			}
			pos = leaf_find(lf, b);
			if (pos < lf->nkeys && lf->k[pos] == b) {
				lf->v[pos] = nn;
			} else {
				/* _insert_in_place's insert, room left; a full leaf splits */
				if (lf->nkeys >= lf->max_entries) {
					why = STOP_INSERT;
					break;
				}
				if (leaf_insert(lf, pos, b, nn) < 0) {
					r = -1;
					break;
				}
			}
			lf->at = pos;
			bmp->leaf = lf - lfs;
			bmp->m[e] = 3;
			if (o < 3)
				d_big++;
			bmp->bm[e] = nn;
		} else {
			/* a removal from the ref-count tree, or a negative count: Python's */
			if (nn < 0 || o > 2)
				break;
			bmp->m[e] = nn;
		}
		if (keep) {
			bmp->oc[e] = o + 1;
			d_old++;
		}
		if (o == 0) {
			if (nn)
				d_alloc++;
		} else if (nn == 0) {
			d_alloc--;
		}
	}
	for (k = 0; k < hand->nl; k++)
		if (lfs[k].live)
			leaf_release(&lfs[k]);	/* Python may resize their arrays */
	PyBuffer_Release(&bitmaps);
	if (is_buf)
		PyBuffer_Release(&bview);
	if (r < 0)
		return NULL;
	if (i == n)
		why = STOP_END;
	return Py_BuildValue("(niLLLiN)", i, why, d_old, d_big, d_alloc, ll.kept,
			     error ? error : Py_NewRef(Py_None));
}

/*
 * A space map's bitmap entries (ll.maps[i]: a bytearray, or bytes), their number in
 * *n; NULL if o is neither (None: every count 0).
 */
static const uint8_t *map_entries(PyObject *o, Py_ssize_t *n)
{
	if (PyByteArray_Check(o)) {
		*n = PyByteArray_GET_SIZE(o);
		return (const uint8_t *)PyByteArray_AS_STRING(o);
	}
	if (PyBytes_Check(o)) {
		*n = PyBytes_GET_SIZE(o);
		return (const uint8_t *)PyBytes_AS_STRING(o);
	}
	return NULL;
}

/*
 * pool.py: Pool._leaf_gather, the Python loop it stands for (the reference): the
 * writes vblocks[k:end] that Pool._leaf_run takes as one run in a mapping leaf, the
 * first at ``j`` of its keys.  leaf_gather(vblocks, k, end, keys, values, j,
 * snapshotted, time_bits, maps, index) returns (olds, idx): each write's old data block
 * and its entry in the leaf, while the writes ascend, each block mapped in the leaf,
 * shared (its time below ``snapshotted``) with an old block counted 2 or more (its
 * bitmap's entry in ``maps``, the data ll's); a write whose old block's bitmap shares
 * an ie-cache slot with bitmap ``index`` (the allocations') is the last taken.
 * vblocks is a list, keys and values the leaf's array('Q')s.  Nothing is changed.
 */
static PyObject *leaf_gather(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *vblocks, *maps, *olds = NULL, *idx = NULL, *o;
	Py_buffer kv, vv;
	Py_ssize_t k, end, j, nkeys, nmaps, i;
	uint64_t snapshotted, mask, index, last = 0, *keys, *values;
	int time_bits, ok = 1;

	if (nargs != 10) {
		PyErr_SetString(PyExc_TypeError, "leaf_gather() takes 10 arguments");
		return NULL;
	}
	vblocks = args[0];
	k = PyLong_AsSsize_t(args[1]);
	end = PyLong_AsSsize_t(args[2]);
	j = PyLong_AsSsize_t(args[5]);
	snapshotted = PyLong_AsUnsignedLongLong(args[6]);
	time_bits = PyLong_AsLong(args[7]);
	maps = args[8];
	index = PyLong_AsUnsignedLongLong(args[9]);
	if (PyErr_Occurred())
		return NULL;
	if (!PyList_Check(vblocks) || !PyList_Check(maps) || time_bits < 0 || time_bits > 63) {
		PyErr_SetString(PyExc_TypeError, "leaf_gather(): vblocks and maps are lists");
		return NULL;
	}
	if (!get_buffer(args[3], &kv, 8, -1)) {
		PyErr_SetString(PyExc_TypeError, "leaf_gather(): keys is an array('Q')");
		return NULL;
	}
	if (!get_buffer(args[4], &vv, 8, kv.len / 8)) {
		PyBuffer_Release(&kv);
		PyErr_SetString(PyExc_TypeError, "leaf_gather(): values is an array('Q') as long as keys");
		return NULL;
	}
	keys = kv.buf;
	values = vv.buf;
	nkeys = kv.len / 8;
	nmaps = PyList_GET_SIZE(maps);
	mask = ((uint64_t)1 << time_bits) - 1;
	if (end > PyList_GET_SIZE(vblocks))
		end = PyList_GET_SIZE(vblocks);
	if (j < 0)
		j = 0;
	olds = PyList_New(0);
	idx = PyList_New(0);
	if (!olds || !idx)
		goto fail;
	for (i = k; i < end; i++) {
		uint64_t vb, value, old, oi;
		const uint8_t *m;
		Py_ssize_t lo, hi, nm;
		int r;

		vb = as_u64(PyList_GET_ITEM(vblocks, i), &ok);
		if (!ok || (i > k && vb <= last))
			break;
		/* bisect_left(keys, vb, j) */
		lo = j;
		hi = nkeys;
		while (lo < hi) {
			Py_ssize_t mid = lo + (hi - lo) / 2;

			if (keys[mid] < vb)
				lo = mid + 1;
			else
				hi = mid;
		}
		j = lo;
		if (j == nkeys || keys[j] != vb)
			break;
		value = values[j];
		if (snapshotted <= (value & mask))
			break;
		old = value >> time_bits;
		oi = old / ENTRIES_PER_BITMAP;
		if (oi >= (uint64_t)nmaps)
			break;
		m = map_entries(PyList_GET_ITEM(maps, oi), &nm);
		if (!m || old - oi * ENTRIES_PER_BITMAP >= (uint64_t)nm)
			break;	/* None: every count 0 */
		if (m[old - oi * ENTRIES_PER_BITMAP] < 2)
			break;	/* a count below 2 (get_count) */
		o = PyLong_FromUnsignedLongLong(old);
		if (!o)
			goto fail;
		r = PyList_Append(olds, o);
		Py_DECREF(o);
		if (r < 0)
			goto fail;
		o = PyLong_FromSsize_t(j);
		if (!o)
			goto fail;
		r = PyList_Append(idx, o);
		Py_DECREF(o);
		if (r < 0)
			goto fail;
		/* its slot is the allocations' (indexes equal modulo the cache's size) */
		if (oi != index && !((oi - index) & (IE_CACHE_SIZE - 1)))
			break;
		last = vb;
	}
	PyBuffer_Release(&kv);
	PyBuffer_Release(&vv);
	return Py_BuildValue("(NN)", olds, idx);
fail:
	Py_XDECREF(olds);
	Py_XDECREF(idx);
	PyBuffer_Release(&kv);
	PyBuffer_Release(&vv);
	return NULL;
}

/*
 * metadata.py: PoolMetadata.overwrite_leaf's walk, the Python loop the reference:
 * overwrite_walk(root, dev, block, blocks, shadows, maps) walks from the mapping
 * tree's ``root`` to device ``dev``'s leaf in the top-level tree, then from its root
 * to ``block``'s leaf, through nodes held in ``blocks`` (tm.blocks), shadows of this
 * transaction (``shadows``, a set) counted 1 in the metadata ll's ``maps``, no
 * internal node full.  Returns (leaf, index of block in it, [(block number, node)] of
 * the walk), None where overwrite_leaf's walk answers None, or NotImplemented where a
 * node or map is not of the types read here (the caller walks in Python).
 */
static PyObject *overwrite_walk(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *blocks, *shadows, *maps, *nodes, *node = NULL, *key, *o, *pair;
	Py_buffer kv;
	uint64_t b, k, block, *keys;
	const uint8_t *m;
	Py_ssize_t i = -1, nkeys, nm, l, h, mid, max_entries;
	int level, plain, r, isleaf;

	if (nargs != 6) {
		PyErr_SetString(PyExc_TypeError, "overwrite_walk() takes 6 arguments");
		return NULL;
	}
	b = PyLong_AsUnsignedLongLong(args[0]);
	k = PyLong_AsUnsignedLongLong(args[1]);
	block = PyLong_AsUnsignedLongLong(args[2]);
	if (PyErr_Occurred())
		return NULL;
	blocks = args[3];
	shadows = args[4];
	maps = args[5];
	if (!PyAnySet_Check(shadows) || !PyList_Check(maps))
		Py_RETURN_NOTIMPLEMENTED;
	if ((plain = plain_get(blocks)) < 0)
		return NULL;
	nodes = PyList_New(0);
	if (!nodes)
		return NULL;
	for (level = 0; level < 2; level++) {
		for (;;) {
			key = PyLong_FromUnsignedLongLong(b);
			if (!key)
				goto fail;
			node = get_item(blocks, key, plain);
			if (!node) {
				Py_DECREF(key);
				if (PyErr_Occurred())
					goto fail;
				goto none;	/* not in core */
			}
			r = PySet_Contains(shadows, key);
			if (r <= 0) {
				Py_DECREF(key);
				if (r < 0)
					goto fail;
				goto none;
			}
			if (b / ENTRIES_PER_BITMAP >= (uint64_t)PyList_GET_SIZE(maps)) {
				Py_DECREF(key);
				goto other;
			}
			o = PyList_GET_ITEM(maps, b / ENTRIES_PER_BITMAP);
			if (o == Py_None) {
				Py_DECREF(key);
				goto none;	/* counted 0 */
			}
			m = map_entries(o, &nm);
			if (!m || b % ENTRIES_PER_BITMAP >= (uint64_t)nm) {
				Py_DECREF(key);
				goto other;
			}
			if (m[b % ENTRIES_PER_BITMAP] != 1) {
				Py_DECREF(key);
				goto none;	/* shared: shadowing copies it */
			}
			pair = PyTuple_Pack(2, key, node);
			Py_DECREF(key);
			if (!pair)
				goto fail;
			r = PyList_Append(nodes, pair);
			Py_DECREF(pair);
			if (r < 0)
				goto fail;
			o = PyObject_GetAttr(node, s_keys);
			if (!o)
				goto fail;
			if (!get_buffer(o, &kv, 8, -1)) {
				Py_DECREF(o);
				goto other;
			}
			keys = kv.buf;
			nkeys = kv.len / 8;
			/* lower_bound: bisect_right(keys, k) - 1 */
			l = 0;
			h = nkeys;
			while (l < h) {
				mid = l + (h - l) / 2;
				if (k < keys[mid])
					h = mid;
				else
					l = mid + 1;
			}
			i = l - 1;
			l = i >= 0 && keys[i] == k;
			PyBuffer_Release(&kv);
			Py_DECREF(o);
			if (i < 0)
				goto none;
			o = PyObject_GetAttr(node, s_leaf);
			if (!o)
				goto fail;
			isleaf = PyObject_IsTrue(o);
			Py_DECREF(o);
			if (isleaf < 0)
				goto fail;
			if (isleaf) {
				if (!l)
					goto none;	/* not mapped */
				break;
			}
			o = PyObject_GetAttr(node, s_max_entries);
			if (!o)
				goto fail;
			max_entries = PyLong_AsSsize_t(o);
			Py_DECREF(o);
			if (max_entries == -1 && PyErr_Occurred())
				goto fail;
			if (nkeys == max_entries)
				goto none;	/* full: the insert would split it */
			o = PyObject_GetAttr(node, s_values);
			if (!o)
				goto fail;
			r = array_u64(o, i, &b);
			Py_DECREF(o);
			if (!r)
				goto other;
			Py_CLEAR(node);
		}
		if (level == 0) {
			/* the device's mapping root, then block's leaf under it */
			o = PyObject_GetAttr(node, s_values);
			if (!o)
				goto fail;
			r = array_u64(o, i, &b);
			Py_DECREF(o);
			if (!r)
				goto other;
			Py_CLEAR(node);
			k = block;
		}
	}
	return Py_BuildValue("(NnN)", node, i, nodes);
none:
	Py_XDECREF(node);
	Py_DECREF(nodes);
	Py_RETURN_NONE;
other:
	Py_XDECREF(node);
	Py_DECREF(nodes);
	Py_RETURN_NOTIMPLEMENTED;
fail:
	Py_XDECREF(node);
	Py_DECREF(nodes);
	return NULL;
}

static PyMethodDef methods[] = {
	{ "run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
	  "add_many's common cases over blocks[start:]; see the source." },
	{ "at_hand", at_hand, METH_NOARGS, "A capsule for run()'s bitmaps at hand." },
	{ "hand_drop", (PyCFunction)(void (*)(void))hand_drop, METH_FASTCALL,
	  "The leaves at hand whose ranges meet [lo, hi) let go." },
	{ "leaf_gather", (PyCFunction)(void (*)(void))leaf_gather, METH_FASTCALL,
	  "Pool._leaf_gather's loop; see the source." },
	{ "overwrite_walk", (PyCFunction)(void (*)(void))overwrite_walk, METH_FASTCALL,
	  "PoolMetadata.overwrite_leaf's walk; see the source." },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_thinsim_space_map", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__thinsim_space_map(void)
{
	s_keys = PyUnicode_InternFromString("keys");
	s_values = PyUnicode_InternFromString("values");
	s_max_entries = PyUnicode_InternFromString("max_entries");
	s_get = PyUnicode_InternFromString("get");
	s_insert = PyUnicode_InternFromString("insert");
	s_leaf = PyUnicode_InternFromString("leaf");
	if (!s_keys || !s_values || !s_max_entries || !s_get || !s_insert || !s_leaf)
		return NULL;
	two_to_64 = PyNumber_Lshift(PyLong_FromLong(1), PyLong_FromLong(64));
	if (!two_to_64)
		return NULL;
	dict_get = PyObject_GetAttr((PyObject *)&PyDict_Type, s_get);
	if (!dict_get)
		return NULL;
	return PyModule_Create(&module);
}
