/* shmsave._fastfiles: write a group of already encoded files with one release of the GIL.
 *
 * A thread that writes tiny images hands the GIL over at every system call
 * Python makes (open, write, close) and at every encode: four hand-offs per
 * image, and with two or more threads each hand-off waits for the GIL (the
 * convoy effect). This module does the file system work of a whole group of
 * images in one call that releases the GIL once.
 *
 * It follows the rules of _files.py for new files only:
 *   - up to one page, not durable: open(O_CREAT | O_EXCL), one write, close;
 *     an error removes the file;
 *   - bigger or durable: an unnamed file (O_TMPFILE), written (and synced when
 *     durable), then linked in through /proc/self/fd.
 * It stops at the first file it cannot create this way and returns how many it
 * wrote and why it stopped (an errno); _files.py writes that one as it always
 * does (an existing name is replaced, no O_TMPFILE falls back to a named
 * temporary file, a real error is reported with its index and path), then
 * hands the rest of the group back here.
 *
 * Signals: a Ctrl-C during the call is acted on once it returns, with every
 * file of the group complete (interrupted system calls are restarted).
 *
 * place() and plain_kind() are the other hot spots of a tiny image in Python:
 * its copy into a stream's ring or a call's staging slot, one memcpy (or one
 * strided copy) instead of three memoryviews or two numpy arrays (_images.py),
 * and the check of the path Writer.imwrite gives it, one scan instead of six
 * (_stream_names.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int folder;
    const char *name;
    const char *data;
    Py_ssize_t size;
} item_t;

/* Write all of data at fd's start; 0 or an errno. */
static int write_all(int fd, const char *data, Py_ssize_t size) {
    Py_ssize_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, data + done, (size_t)(size - done), (off_t)done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        done += n;
    }
    return 0;
}

static int open_retrying(int folder, const char *name, int flags) {
    int fd;
    do {
        fd = openat(folder, name, flags, 0666);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/* A new file of up to one page: created, written with one write(), closed; removed on error. */
static int create_small(const item_t *item) {
    int fd = open_retrying(item->folder, item->name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC);
    if (fd < 0) return errno;
    int error = write_all(fd, item->data, item->size);
    if (close(fd) != 0 && error == 0 && errno != EINTR) error = errno;
    if (error != 0) unlinkat(item->folder, item->name, 0);
    return error;
}

/* An unnamed file, written (synced when durable), then linked in as the name. */
static int create_unnamed(const item_t *item, int durable) {
#ifdef O_TMPFILE
    int fd = open_retrying(item->folder, ".", O_WRONLY | O_TMPFILE | O_CLOEXEC);
    if (fd < 0) return errno;
    int error = write_all(fd, item->data, item->size);
    if (error == 0 && durable && fsync(fd) != 0) error = errno;
    if (error == 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        if (linkat(AT_FDCWD, path, item->folder, item->name, AT_SYMLINK_FOLLOW) != 0) error = errno;
    }
    close(fd);
    return error;
#else
    (void)item;
    (void)durable;
    return EOPNOTSUPP;
#endif
}

PyDoc_STRVAR(write_files_doc,
"write_files(folders, names, buffers, durable, tmpfile, page) -> (written, errno)\n\n"
"Create each ``names[k]`` in the folder descriptor ``folders[k]`` holding the bytes of\n"
"``buffers[k]``, in order, with one release of the GIL; a new name appears only complete.\n"
"Stops at the first file it cannot create so: ``written`` is how many it wrote, ``errno``\n"
"why it stopped (0 when it wrote them all; EEXIST for an existing name; EOPNOTSUPP and the\n"
"like where ``tmpfile`` is false or the file system lacks O_TMPFILE).");

static PyObject *write_files(PyObject *self, PyObject *args) {
    PyObject *folders, *names, *buffers;
    int durable, tmpfile;
    Py_ssize_t page;
    if (!PyArg_ParseTuple(args, "O!O!O!ppn", &PyList_Type, &folders, &PyList_Type, &names, &PyList_Type, &buffers,
                          &durable, &tmpfile, &page))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(names);
    if (PyList_GET_SIZE(folders) != count || PyList_GET_SIZE(buffers) != count) {
        PyErr_SetString(PyExc_ValueError, "write_files: folders, names and buffers differ in length");
        return NULL;
    }
    item_t *items = PyMem_Calloc((size_t)(count ? count : 1), sizeof(item_t));
    Py_buffer *views = PyMem_Calloc((size_t)(count ? count : 1), sizeof(Py_buffer));
    PyObject **encoded = PyMem_Calloc((size_t)(count ? count : 1), sizeof(PyObject *));
    PyObject *result = NULL;
    Py_ssize_t held = 0, k;
    if (items == NULL || views == NULL || encoded == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (held = 0; held < count; held++) {
        long folder = PyLong_AsLong(PyList_GET_ITEM(folders, held));
        if (folder == -1 && PyErr_Occurred()) goto done;
        if (!PyUnicode_FSConverter(PyList_GET_ITEM(names, held), &encoded[held])) goto done;
        if (PyObject_GetBuffer(PyList_GET_ITEM(buffers, held), &views[held], PyBUF_SIMPLE) != 0) {
            Py_CLEAR(encoded[held]);
            goto done;
        }
        items[held].folder = (int)folder;
        items[held].name = PyBytes_AS_STRING(encoded[held]);
        items[held].data = views[held].buf;
        items[held].size = views[held].len;
    }
    Py_ssize_t written = 0;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; written < count; written++) {
        const item_t *item = &items[written];
        if (item->size <= page && !durable)
            error = create_small(item);
        else if (tmpfile)
            error = create_unnamed(item, durable);
        else
            error = EOPNOTSUPP;
        if (error != 0) break;
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("ni", written, error);
done:
    for (k = 0; k < held; k++) {
        PyBuffer_Release(&views[k]);
        Py_XDECREF(encoded[k]);
    }
    PyMem_Free(items);
    PyMem_Free(views);
    PyMem_Free(encoded);
    return result;
}

PyDoc_STRVAR(place_doc,
"place(ring, offset, image) -> None\n\n"
"Copy the pixels of ``image`` (any buffer with strides: a crop, a channel, a flipped view) in C\n"
"order into the writable buffer ``ring`` at ``offset``, as\n"
"``np.frombuffer(ring, image.dtype, image.size, offset).reshape(image.shape)[...] = image`` does\n"
"without making two arrays (a tiny image into a stream's ring or a staging slot). ValueError when\n"
"it does not fit.");

/* Copy the elements of a strided buffer, in C order, to dest. The trailing dimensions that are
   contiguous together go as one memcpy; the innermost of the others is a loop of its own. */
static void copy_strided(char *dest, const Py_buffer *view) {
    Py_ssize_t block = view->itemsize;
    int k = view->ndim;
    while (k > 0 && view->strides[k - 1] == block) {
        block *= view->shape[k - 1];
        k--;
    }
    if (k == 0) {
        memcpy(dest, view->buf, (size_t)block);
        return;
    }
    Py_ssize_t index[PyBUF_MAX_NDIM] = {0};
    Py_ssize_t n = view->shape[k - 1], step = view->strides[k - 1];
    const char *src = view->buf;
    for (;;) {
        if (block == 1) {
            for (Py_ssize_t i = 0; i < n; i++) dest[i] = src[i * step];
        } else {
            for (Py_ssize_t i = 0; i < n; i++) memcpy(dest + i * block, src + i * step, (size_t)block);
        }
        dest += n * block;
        int d = k - 2;
        for (; d >= 0; d--) {
            src += view->strides[d];
            if (++index[d] < view->shape[d]) break;
            src -= view->strides[d] * view->shape[d];
            index[d] = 0;
        }
        if (d < 0) return;
    }
}

static PyObject *place(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "place(ring, offset, image) takes 3 arguments");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    Py_buffer ring, image;
    if (PyObject_GetBuffer(args[2], &image, PyBUF_STRIDES) != 0) return NULL;
    if (PyObject_GetBuffer(args[0], &ring, PyBUF_WRITABLE) != 0) {
        PyBuffer_Release(&image);
        return NULL;
    }
    int fits = offset >= 0 && image.len <= ring.len - offset;
    if (fits && image.len > 0) {
        if (PyBuffer_IsContiguous(&image, 'C')) memcpy((char *)ring.buf + offset, image.buf, (size_t)image.len);
        else copy_strided((char *)ring.buf + offset, &image);
    }
    PyBuffer_Release(&ring);
    PyBuffer_Release(&image);
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "place: the image does not fit in the ring at that offset");
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(plain_kind_doc,
"plain_kind(path, kinds) -> object or None\n\n"
"``kinds.get(path[path.rfind('.'):])`` for a path that is plain: a ``str`` (not a subclass) that\n"
"starts with '/', does not end with it and has no NUL, '/.' or '//' in it, so that it is its own\n"
"normalised absolute form. None for any other path: the caller takes the long way\n"
"(_stream_names.py), which also refuses what must be refused.");

static PyObject *plain_kind(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "plain_kind(path, kinds) takes a path and a dict");
        return NULL;
    }
    PyObject *path = args[0];
    if (!PyUnicode_CheckExact(path)) Py_RETURN_NONE;
    Py_ssize_t n = PyUnicode_GET_LENGTH(path);
    int kind = PyUnicode_KIND(path);
    const void *data = PyUnicode_DATA(path);
    if (n == 0 || PyUnicode_READ(kind, data, 0) != '/' || PyUnicode_READ(kind, data, n - 1) == '/') Py_RETURN_NONE;
    Py_ssize_t dot = -1;
    Py_UCS4 previous = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == 0 || (previous == '/' && (c == '.' || c == '/'))) Py_RETURN_NONE;
        if (c == '.') dot = i;
        previous = c;
    }
    PyObject *extension = PyUnicode_Substring(path, dot < 0 ? n - 1 : dot, n);  /* path[-1:] when no '.' */
    if (extension == NULL) return NULL;
    PyObject *found = PyDict_GetItemWithError(args[1], extension);  /* borrowed */
    Py_DECREF(extension);
    if (found == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(found);
    return found;
}

static PyMethodDef methods[] = {
    {"write_files", write_files, METH_VARARGS, write_files_doc},
    {"place", (PyCFunction)(void (*)(void))place, METH_FASTCALL, place_doc},
    {"plain_kind", (PyCFunction)(void (*)(void))plain_kind, METH_FASTCALL, plain_kind_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shmsave._fastfiles",
    "Writing a group of encoded files with one release of the GIL; the copy of a small image into shared memory and the check of a path (see _fastfiles.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fastfiles(void) { return PyModule_Create(&module); }
