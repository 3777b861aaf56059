/*
 * thinsim/model/_disk.c: the common cases of btree node I/O (thinsim/model/disk.py) in C.
 *
 * A day of churn on a 1 TiB thin with snapshots reads some 170k btree nodes back from
 * the metadata file and writes as many (transaction.BlockCache cannot hold them).  In
 * Python each costs a few microseconds of struct, array and numpy calls around the
 * copy and the checksum; here it is the copy and the checksum.
 *
 *   encode_node(b, node)       disk.encode_node: struct btree_node, checksum sealed
 *   parse_node(data, b)        disk._parse_checked_node
 *   load_node(fd, pos, b)      disk.NodeReader.load: pread, node_check, parse
 *
 * Each does only the common case -- u64 keys and u64 or u32 values in array('Q')s, a
 * node that passes its checks -- and returns None for anything else: the caller then
 * does the same work in Python, which is the reference (tests/test_disk_c.py holds the
 * two to the same bytes, nodes and errors).  setup() gives the module the Node class
 * and how to checksum.
 *
 * The checksum is dm-block-manager.c's crc32c of the block after its csum field: with
 * SSE 4.2 the CPU's crc32 instruction on three interleaved streams (the instruction's
 * latency is three times its throughput), whose registers are put together with the
 * tables of the zeros after them (see shift()); without it, the ``crc32c`` package's
 * function, as disk.py calls it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#define HAVE_SSE42_BUILD 1
#endif

#define BLOCK 4096
#define LEAF_NODE 2
#define INTERNAL_NODE 1
#define BTREE_CSUM_XOR 121107u

/*
 * The checksummed bytes (4 .. 4096): 4 to reach an 8-byte boundary, three streams of
 * STREAM bytes, one u64 left over.
 */
#define STREAM 1360

/* the Node class and its slots (setup) */
static PyTypeObject *node_type;
static PyMemberDef *m_leaf, *m_max_entries, *m_value_size, *m_keys, *m_values;
static PyObject *array_type;	/* array.array */
static PyObject *one_zero;	/* array('Q', [0]): a new array of n zeros is one_zero * n */
static PyObject *crc_func;	/* crc32c.crc32c, where there is no SSE 4.2 */
static int use_hw;

/* crc32c register tables: byte-at-a-time, and the shifts over STREAM and 2 * STREAM zeros */
static uint32_t table[256];
static uint32_t shift1[4][256], shift2[4][256];

static void make_tables(void)
{
	uint32_t basis1[32], basis2[32];
	int i, j, k;

	for (i = 0; i < 256; i++) {
		uint32_t c = i;

		for (k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		table[i] = c;
	}
	/* the register is linear in its bits: where STREAM zero bytes take each of them */
	for (i = 0; i < 32; i++) {
		uint32_t c = 1u << i;

		for (k = 0; k < STREAM; k++)
			c = table[c & 0xFF] ^ (c >> 8);
		basis1[i] = c;
		for (k = 0; k < STREAM; k++)
			c = table[c & 0xFF] ^ (c >> 8);
		basis2[i] = c;
	}
	for (j = 0; j < 4; j++)
		for (i = 0; i < 256; i++) {
			uint32_t a = 0, b = 0;

			for (k = 0; k < 8; k++)
				if (i & (1 << k)) {
					a ^= basis1[8 * j + k];
					b ^= basis2[8 * j + k];
				}
			shift1[j][i] = a;
			shift2[j][i] = b;
		}
}

/* the register after STREAM (s = shift1) or 2 * STREAM (shift2) zero bytes from c */
static uint32_t shift(uint32_t s[4][256], uint32_t c)
{
	return s[0][c & 0xFF] ^ s[1][(c >> 8) & 0xFF] ^ s[2][(c >> 16) & 0xFF] ^ s[3][c >> 24];
}

#ifdef HAVE_SSE42_BUILD
/* the crc32c register (no final xor) after block[4:], from ~0 */
__attribute__((target("sse4.2"))) static uint32_t block_crc_hw(const unsigned char *block)
{
	const unsigned char *p = block + 8, *q = p + STREAM, *r = q + STREAM;
	uint64_t a, b = 0, c = 0, w;
	uint32_t head;
	int i;

	memcpy(&head, block + 4, 4);
	a = _mm_crc32_u32(0xFFFFFFFFu, head);
	for (i = 0; i < STREAM; i += 8) {
		memcpy(&w, p + i, 8);
		a = _mm_crc32_u64(a, w);
		memcpy(&w, q + i, 8);
		b = _mm_crc32_u64(b, w);
		memcpy(&w, r + i, 8);
		c = _mm_crc32_u64(c, w);
	}
	a = shift(shift2, a) ^ shift(shift1, b) ^ c;
	memcpy(&w, r + STREAM, 8);
	return _mm_crc32_u64(a, w);
}
#endif

/* block[4:]'s checksum register as block_crc_hw's; -1 with an error set */
static int64_t block_crc(const unsigned char *block)
{
	PyObject *view, *r;
	uint32_t c;

#ifdef HAVE_SSE42_BUILD
	if (use_hw)
		return block_crc_hw(block);
#endif
	view = PyMemoryView_FromMemory((char *)block + 4, BLOCK - 4, PyBUF_READ);
	if (!view)
		return -1;
	/* the package's crc32c(data, 0) is the register from ~0, xored with ~0 */
	r = PyObject_CallFunction(crc_func, "Oi", view, 0);
	Py_DECREF(view);
	if (!r)
		return -1;
	c = (uint32_t)PyLong_AsUnsignedLong(r);
	Py_DECREF(r);
	if (PyErr_Occurred())
		return -1;
	return c ^ 0xFFFFFFFFu;
}

static uint32_t get_le32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap32(v);
#endif
	return v;
}

static uint64_t get_le64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

static void put_le32(unsigned char *p, uint32_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap32(v);
#endif
	memcpy(p, &v, 4);
}

static void put_le64(unsigned char *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	memcpy(p, &v, 8);
}

/*
 * An exact array('Q')'s items, read-only: 1 with *view held (released by the caller),
 * 0 if o is anything else (no error set).
 */
static int u64_array(PyObject *o, Py_buffer *view)
{
	if ((PyObject *)Py_TYPE(o) != array_type)
		return 0;
	if (PyObject_GetBuffer(o, view, PyBUF_FORMAT) < 0) {
		PyErr_Clear();
		return 0;
	}
	if (view->itemsize != 8 || strcmp(view->format, "Q") != 0) {
		PyBuffer_Release(view);
		return 0;
	}
	return 1;
}

/* an exact int as a u64 no larger than max: 0 with *ok cleared (no error set) otherwise */
static uint64_t small_int(PyObject *o, uint64_t max, int *ok)
{
	uint64_t v;

	if (!o || !PyLong_CheckExact(o)) {
		*ok = 0;
		return 0;
	}
	v = PyLong_AsUnsignedLongLong(o);
	if ((v == (uint64_t)-1 && PyErr_Occurred()) || v > max) {
		PyErr_Clear();
		*ok = 0;
		return 0;
	}
	return v;
}

/*
 * encode_node(b, node): disk.encode_node's bytes, or None where that is not an exact
 * Node with an array('Q') of keys and, when it has any, an array('Q') of as many u64 or
 * u32 values (a leaf's value_size 8 or 4) that fit the block.
 */
static PyObject *encode_node(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *leaf_o = NULL, *me_o = NULL, *vs_o = NULL, *keys = NULL, *values = NULL;
	PyObject *out = NULL;
	Py_buffer kv, vv;
	int have_k = 0, have_v = 0, ok = 1, leaf;
	uint64_t b, max_entries, vsize, n, i, at;
	unsigned char *p;
	int64_t crc;

	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "encode_node() takes 2 arguments");
		return NULL;
	}
	if (!node_type || Py_TYPE(args[1]) != node_type)
		Py_RETURN_NONE;
	b = small_int(args[0], UINT64_MAX, &ok);
	leaf_o = PyMember_GetOne((const char *)args[1], m_leaf);
	me_o = PyMember_GetOne((const char *)args[1], m_max_entries);
	vs_o = PyMember_GetOne((const char *)args[1], m_value_size);
	keys = PyMember_GetOne((const char *)args[1], m_keys);
	values = PyMember_GetOne((const char *)args[1], m_values);
	if (!ok || !leaf_o || !me_o || !vs_o || !keys || !values)
		goto fallback;
	leaf = PyObject_IsTrue(leaf_o);
	if (leaf < 0)
		goto fallback;
	max_entries = small_int(me_o, UINT32_MAX, &ok);
	vsize = leaf ? small_int(vs_o, UINT32_MAX, &ok) : 8;
	if (!ok || (vsize != 8 && vsize != 4))
		goto fallback;
	if (!(have_k = u64_array(keys, &kv)))
		goto fallback;
	n = kv.len / 8;
	if (n) {
		if (!(have_v = u64_array(values, &vv)) || (uint64_t)vv.len != 8 * n)
			goto fallback;
	}
	at = 32 + 8 * max_entries;
	if (n > max_entries || at + vsize * n > BLOCK)
		goto fallback;

	out = PyBytes_FromStringAndSize(NULL, BLOCK);
	if (!out)
		goto done;
	p = (unsigned char *)PyBytes_AS_STRING(out);
	memset(p, 0, BLOCK);
	put_le32(p + 4, leaf ? LEAF_NODE : INTERNAL_NODE);
	put_le64(p + 8, b);
	put_le32(p + 16, (uint32_t)n);
	put_le32(p + 20, (uint32_t)max_entries);
	put_le32(p + 24, (uint32_t)vsize);
	if (n) {
		const uint64_t *k = kv.buf, *v = vv.buf;

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
		for (i = 0; i < n; i++)
			put_le64(p + 32 + 8 * i, k[i]);
		if (vsize == 8) {
			for (i = 0; i < n; i++)
				put_le64(p + at + 8 * i, v[i]);
		} else {
#else
		memcpy(p + 32, k, 8 * n);
		if (vsize == 8) {
			memcpy(p + at, v, 8 * n);
		} else {
#endif
			/* reference counts: their low 32 bits, as numpy's astype('<u4') keeps */
			for (i = 0; i < n; i++)
				put_le32(p + at + 4 * i, (uint32_t)v[i]);
		}
	}
	crc = block_crc(p);
	if (crc < 0) {
		Py_CLEAR(out);
		goto done;
	}
	put_le32(p, ((uint32_t)crc ^ BTREE_CSUM_XOR));
	goto done;
fallback:
	PyErr_Clear();
	out = Py_NewRef(Py_None);
done:
	if (have_k)
		PyBuffer_Release(&kv);
	if (have_v)
		PyBuffer_Release(&vv);
	Py_XDECREF(leaf_o);
	Py_XDECREF(me_o);
	Py_XDECREF(vs_o);
	Py_XDECREF(keys);
	Py_XDECREF(values);
	return out;
}

/* a new array('Q') of the n u64s (width 8) or u32s (width 4) at p; NULL with an error */
static PyObject *u64s(const unsigned char *p, uint64_t n, int width)
{
	PyObject *a = PySequence_Repeat(one_zero, (Py_ssize_t)n);
	Py_buffer view;
	uint64_t *out, i;

	if (!a || !n)
		return a;
	if (PyObject_GetBuffer(a, &view, PyBUF_WRITABLE) < 0) {
		Py_DECREF(a);
		return NULL;
	}
	out = view.buf;
	if (width == 8) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
		for (i = 0; i < n; i++)
			out[i] = get_le64(p + 8 * i);
#else
		memcpy(out, p, 8 * n);
		(void)i;
#endif
	} else {
		for (i = 0; i < n; i++)
			out[i] = get_le32(p + 4 * i);
	}
	PyBuffer_Release(&view);
	return a;
}

/*
 * The Node of a block whose header is checked (bnr, entry counts): None (a new
 * reference) where its values are not u64s or u32s, NULL with an error.
 */
static PyObject *make_node(const unsigned char *p)
{
	uint32_t flags = get_le32(p + 4), n = get_le32(p + 16), me = get_le32(p + 20);
	uint32_t vsize = get_le32(p + 24);
	int leaf = (flags & LEAF_NODE) != 0;
	PyObject *node, *keys, *values, *o;

	if (!leaf)
		vsize = 8;
	/* an internal node's header may say values narrower than the u64s read */
	if ((vsize != 8 && vsize != 4) || 32 + (8 + (uint64_t)vsize) * me > BLOCK)
		Py_RETURN_NONE;
	keys = u64s(p + 32, n, 8);
	if (!keys)
		return NULL;
	values = u64s(p + 32 + 8 * (uint64_t)me, n, vsize);
	if (!values) {
		Py_DECREF(keys);
		return NULL;
	}
	/* Node.__init__ only sets its slots, given keys and values */
	node = node_type->tp_alloc(node_type, 0);
	if (!node)
		goto fail;
	if (PyMember_SetOne((char *)node, m_leaf, leaf ? Py_True : Py_False) < 0)
		goto fail;
	if (!(o = PyLong_FromUnsignedLong(me)) || PyMember_SetOne((char *)node, m_max_entries, o) < 0)
		goto fail_o;
	Py_DECREF(o);
	if (!(o = PyLong_FromUnsignedLong(vsize)) || PyMember_SetOne((char *)node, m_value_size, o) < 0)
		goto fail_o;
	Py_DECREF(o);
	if (PyMember_SetOne((char *)node, m_keys, keys) < 0 ||
	    PyMember_SetOne((char *)node, m_values, values) < 0)
		goto fail;
	Py_DECREF(keys);
	Py_DECREF(values);
	return node;
fail_o:
	Py_XDECREF(o);
fail:
	Py_XDECREF(node);
	Py_DECREF(keys);
	Py_DECREF(values);
	return NULL;
}

/*
 * Whether a node block's header passes node_check for block b (but its checksum, and
 * its flags, which _parse_checked_node does not look at): the block number, and the
 * entry counts (32 + (8 + value_size) * max_entries <= BLOCK, nr_entries <= max_entries).
 */
static int header_ok(const unsigned char *p, uint64_t b)
{
	uint64_t n = get_le32(p + 16), me = get_le32(p + 20), vsize = get_le32(p + 24);

	if (get_le64(p + 8) != b || n > me)
		return 0;
	return me == 0 || 8 + vsize <= (BLOCK - 32) / me;
}

/*
 * parse_node(data, b): disk._parse_checked_node's Node, or None where it raises or
 * keeps other values than u64s and u32s.
 */
static PyObject *parse_node(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	Py_buffer view;
	PyObject *out;
	uint64_t b;
	int ok = 1;

	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "parse_node() takes 2 arguments");
		return NULL;
	}
	b = small_int(args[1], UINT64_MAX, &ok);
	if (!ok || !node_type)
		Py_RETURN_NONE;
	if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
		PyErr_Clear();
		Py_RETURN_NONE;
	}
	if (view.len == BLOCK && header_ok(view.buf, b))
		out = make_node(view.buf);
	else
		out = Py_NewRef(Py_None);
	PyBuffer_Release(&view);
	return out;
}

/*
 * load_node(fd, pos, b): NodeReader.load's Node of the block at pos, or None where
 * anything is not as it is in a valid u64- or u32-valued node (a short read or an
 * error, another block's checksum, a failed check): the caller reads it again and
 * finds out in Python.
 */
static PyObject *load_node(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	unsigned char block[BLOCK] __attribute__((aligned(8)));
	long long pos;
	uint64_t b;
	int64_t crc;
	int ok = 1;
	long fd;

	if (nargs != 3) {
		PyErr_SetString(PyExc_TypeError, "load_node() takes 3 arguments");
		return NULL;
	}
	fd = PyLong_AsLong(args[0]);
	pos = PyLong_AsLongLong(args[1]);
	if (PyErr_Occurred()) {
		PyErr_Clear();
		Py_RETURN_NONE;
	}
	b = small_int(args[2], UINT64_MAX, &ok);
	if (!ok || !node_type || fd < 0 || fd > INT_MAX || pos < 0 ||
	    pread((int)fd, block, BLOCK, (off_t)pos) != BLOCK)
		Py_RETURN_NONE;
	crc = block_crc(block);
	if (crc < 0)
		return NULL;
	if (get_le32(block) != ((uint32_t)crc ^ BTREE_CSUM_XOR) || !header_ok(block, b) ||
	    !(get_le32(block + 4) & (INTERNAL_NODE | LEAF_NODE)))
		Py_RETURN_NONE;
	return make_node(block);
}

/* one of Node's slots */
static PyMemberDef *slot(PyObject *cls, const char *name)
{
	PyObject *d = PyObject_GetAttrString(cls, name);
	PyMemberDef *m;

	if (!d)
		return NULL;
	if (!Py_IS_TYPE(d, &PyMemberDescr_Type)) {
		Py_DECREF(d);
		PyErr_Format(PyExc_TypeError, "setup(): Node.%s is not a slot", name);
		return NULL;
	}
	/* the class holds the descriptor, and the descriptor its member */
	m = ((PyMemberDescrObject *)d)->d_member;
	Py_DECREF(d);
	if (m->type != T_OBJECT_EX && m->type != T_OBJECT) {
		PyErr_Format(PyExc_TypeError, "setup(): Node.%s is not an object slot", name);
		return NULL;
	}
	return m;
}

/*
 * setup(Node, one_zero, crc32c, hardware): the Node class (its slots), array('Q', [0]),
 * the crc32c package's function, and whether to use the CPU's crc32 where it has one
 * (tests turn it off); returns whether it is used.
 */
static PyObject *setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *cls, *arr;
	Py_buffer view;
	int hw;

	if (nargs != 4) {
		PyErr_SetString(PyExc_TypeError, "setup() takes 4 arguments");
		return NULL;
	}
	cls = args[0];
	arr = args[1];
	if (!PyType_Check(cls) || !PyCallable_Check(args[2])) {
		PyErr_SetString(PyExc_TypeError, "setup(): Node is a class, crc32c a function");
		return NULL;
	}
	if (PyObject_GetBuffer(arr, &view, PyBUF_FORMAT) < 0)
		return NULL;
	if (view.itemsize != 8 || view.len != 8 || strcmp(view.format, "Q") != 0 ||
	    *(uint64_t *)view.buf != 0) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_TypeError, "setup(): one_zero is array('Q', [0])");
		return NULL;
	}
	PyBuffer_Release(&view);
	if ((hw = PyObject_IsTrue(args[3])) < 0)
		return NULL;
	if (!(m_leaf = slot(cls, "leaf")) || !(m_max_entries = slot(cls, "max_entries")) ||
	    !(m_value_size = slot(cls, "value_size")) || !(m_keys = slot(cls, "keys")) ||
	    !(m_values = slot(cls, "values"))) {
		node_type = NULL;
		return NULL;
	}
	Py_INCREF(cls);
	Py_XSETREF(node_type, (PyTypeObject *)cls);
	Py_INCREF(arr);
	Py_XSETREF(one_zero, arr);
	Py_INCREF((PyObject *)Py_TYPE(arr));
	Py_XSETREF(array_type, (PyObject *)Py_TYPE(arr));
	Py_INCREF(args[2]);
	Py_XSETREF(crc_func, args[2]);
	use_hw = 0;
#ifdef HAVE_SSE42_BUILD
	__builtin_cpu_init();
	use_hw = hw && __builtin_cpu_supports("sse4.2");
#endif
	return PyBool_FromLong(use_hw);
}

static PyMethodDef methods[] = {
	{ "setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
	  "setup(Node, array('Q', [0]), crc32c, hardware): what the others need." },
	{ "encode_node", (PyCFunction)(void (*)(void))encode_node, METH_FASTCALL,
	  "disk.encode_node's common case, or None." },
	{ "parse_node", (PyCFunction)(void (*)(void))parse_node, METH_FASTCALL,
	  "disk._parse_checked_node's common case, or None." },
	{ "load_node", (PyCFunction)(void (*)(void))load_node, METH_FASTCALL,
	  "disk.NodeReader.load's common case, or None." },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_thinsim_disk", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__thinsim_disk(void)
{
	make_tables();
	return PyModule_Create(&module);
}
