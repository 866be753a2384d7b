/*
 * pfkeyd.recordfast: the two steps of building a record (pfkeyd/record.py) that
 * cost most when written in Python.
 *
 * A record is built as an instance of its plain slotted "twin" class, whose fields
 * are stored directly, and then retyped as the public class, whose __setattr__
 * refuses.  In Python the retyping is an assignment to __class__: a generic
 * attribute store, an audit event and CPython's general layout comparison, about
 * 300 instructions per record; and the blank twin comes from object.__new__(twin),
 * whose wrapper slices its argument tuple, about 150 more.  Here:
 *
 *   blank(twin)       a new instance of twin with every slot empty, as
 *                     object.__new__(twin) makes it;
 *   seal(obj, cls)    retypes obj, an instance of exactly cls's base, as cls and
 *                     returns it; cls must add nothing to the base's layout.
 *
 * Both check their arguments and raise TypeError rather than build an object whose
 * layout is not its type's.  bench/README.md ("Records") has the figures.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static int
plain_layout(PyTypeObject *t)
{
    /* a heap type whose instances object.__new__ may build: no item storage, no
     * constructor of its own, not abstract */
    return (t->tp_flags & Py_TPFLAGS_HEAPTYPE) && t->tp_itemsize == 0
           && t->tp_new == PyBaseObject_Type.tp_new
           && !(t->tp_flags & Py_TPFLAGS_IS_ABSTRACT);
}

static PyObject *
blank(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyType_Check(arg) || !plain_layout((PyTypeObject *)arg)) {
        PyErr_Format(PyExc_TypeError, "blank() needs a plain slotted class, not %R", arg);
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)arg;
    return t->tp_alloc(t, 0);
}

static PyObject *
seal(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "seal() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *obj = args[0], *cls = args[1];
    PyTypeObject *old = Py_TYPE(obj);
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "seal() needs a class, not %R", cls);
        return NULL;
    }
    PyTypeObject *t = (PyTypeObject *)cls;
    if (t->tp_base != old || !(t->tp_flags & Py_TPFLAGS_HEAPTYPE) || !plain_layout(old)
        || t->tp_basicsize != old->tp_basicsize || t->tp_itemsize != 0
        || t->tp_dictoffset != old->tp_dictoffset || t->tp_weaklistoffset != old->tp_weaklistoffset
        || (t->tp_flags & Py_TPFLAGS_HAVE_GC) != (old->tp_flags & Py_TPFLAGS_HAVE_GC)
        || t->tp_dealloc != old->tp_dealloc || t->tp_free != old->tp_free) {
        PyErr_Format(PyExc_TypeError, "seal(): %R does not extend %R without slots of its own",
                     cls, (PyObject *)old);
        return NULL;
    }
    Py_INCREF(t);
    Py_SET_TYPE(obj, t);
    Py_DECREF(old); /* heap types: every instance holds a reference to its type */
    return Py_NewRef(obj);
}

static PyMethodDef methods[] = {
    {"blank", blank, METH_O, "A new instance of a plain slotted class, every slot empty."},
    {"seal", (PyCFunction)(void (*)(void))seal, METH_FASTCALL,
     "Retype an instance of cls's base as cls (which adds no slots); return it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pfkeyd.recordfast", "Record construction steps (pfkeyd/record.py).", 0,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit_recordfast(void)
{
    return PyModule_Create(&module);
}
