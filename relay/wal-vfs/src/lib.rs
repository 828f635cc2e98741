//! The relay's SQLite VFS, [`NAME`]: SQLite's own `unix` VFS, except that a WAL file's
//! frames reach the file in one `pwrite` per commit instead of two per frame.
//!
//! The only crate of the workspace with `unsafe` code: SQLite's VFS interface is C
//! function pointers over raw file structures. Its tests run it against SQLite itself
//! (`tests/vfs.rs`).
//!
//! SQLite writes each WAL frame as two writes, its 24-byte header and then its page, so a
//! commit of the cache writer (about a dozen frames) cost about 25 system calls, each of
//! which also takes the file's inode lock and updates its modification time: on the relay's
//! development host, 14 frames written so took about 35 µs, and 8 µs written at once. This VFS
//! keeps the writes to a WAL file that follow one another in a buffer and writes the buffer
//! out
//!
//! - as soon as the page of a *commit frame* (a frame whose header gives the database size,
//!   which only a transaction's last frame does) is in it: within the write of that page, so
//!   a failed write fails the commit as before, and the commit is in the file (the OS's page
//!   cache) before SQLite publishes it to other connections or returns;
//! - before anything else is done with that file (a read, a sync, a truncate, its size, a
//!   lock, a file control, closing it), and before a write that does not follow the buffer;
//! - when it holds [`MAX_BUFFERED`] bytes (a transaction that spills pages before its
//!   commit).
//!
//! A write to the place the file was last read from, right after that read, is not
//! buffered: that is how SQLite rewrites the checksums of frames a transaction wrote twice
//! (a read of the frame, then its header), and the last header it rewrites is a commit
//! frame's, with no page after it. (A commit frame's header written so still has its page
//! flushed at once: SQLite's recovery of a WAL whose last frame is torn reads last where the
//! next frame goes, and in exclusive locking mode nothing else is done with the WAL file
//! before the next commit writes that frame's header there. With shared memory, recovery
//! gives up the WAL's write lock, which forgets the read, so the header is buffered.)
//!
//! What a WAL file still buffers when its connection gives up the WAL's write lock was
//! not committed (a transaction that spilled pages and rolled back): it is dropped there,
//! as the frames are in SQLite, not written later over what the next writer commits at the
//! same place. The database file's shared-memory lock call is where that is seen; a
//! connection's WAL file is found from its database file by the name SQLite opened them
//! with (`sqlite3_filename_database`); in exclusive locking mode, where that lock is not
//! taken through shared memory, it is dropped when the database file's lock goes down. On
//! a database without "powersafe overwrite" (asked of the database file, as SQLite does)
//! SQLite pads commits to a sector and splits their last frame around a sync: WAL files
//! there are not buffered at all.
//!
//! Durability is therefore SQLite's own: what a commit wrote is in the file when the commit
//! returns, whatever happens to the process after. A buffer that could not be written is
//! kept and written again before anything else: nothing written after it can reach the file
//! first. The rules above rest on how SQLite (the bundled version rusqlite builds) writes
//! its WAL; the tests check them against it: a commit is one write, and a copy of the files
//! taken right after a commit, recovered by SQLite from the WAL alone, holds it.
//!
//! Every other file (the database, its shared memory, journals) goes straight to the `unix`
//! VFS; so does every method but `xOpen`, which wraps the file the `unix` VFS opens.

use rusqlite::ffi;
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock};

/// The VFS's name, for [`rusqlite::Connection::open_with_flags_and_vfs`].
pub const NAME: &str = "peermail-wal";
const NAME_C: &CStr = c"peermail-wal";

/// At most about this many bytes wait in a WAL file's buffer.
pub const MAX_BUFFERED: usize = 1 << 20;

/// The most the unix VFS writes in one call (it writes at most 128 KiB - 1 bytes per
/// `pwrite`, and reports a longer write that makes no progress as a full disk).
const MAX_WRITE: usize = 124 * 1024;

/// The size of a WAL frame header, which SQLite writes apart from the frame's page.
const FRAME_HEADER: usize = 24;

thread_local! {
    /// Writes this VFS made to WAL files from this thread.
    static WAL_WRITES: Cell<u64> = const { Cell::new(0) };
}

/// How many writes this thread made to WAL files through this VFS (a connection's writes
/// are made by the thread that uses it): a commit is one.
pub fn wal_writes_on_this_thread() -> u64 {
    WAL_WRITES.with(Cell::get)
}

fn count_wal_write() {
    WAL_WRITES.with(|n| n.set(n.get() + 1));
}

/// The `unix` VFS, which does the work: set before this VFS is registered.
static UNIX: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// How registering went (once per process).
static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

/// A connection's files, as this VFS links them.
struct Link {
    /// The address of the name SQLite opened the database file with (which the WAL
    /// file's name leads back to: `sqlite3_filename_database`).
    db_name: usize,
    /// The unix VFS's database file.
    db_real: usize,
    /// The WAL file's buffer; 0 while none is open (or it is not buffered).
    wal: usize,
}

/// One [`Link`] per open database file.
static LINKS: Mutex<Vec<Link>> = Mutex::new(Vec::new());

fn links() -> std::sync::MutexGuard<'static, Vec<Link>> {
    LINKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops what the WAL of the connection whose database file is named `db_name` still
/// buffers: called once the connection's write transaction is over, when that was not
/// committed (a commit is flushed within its last write).
///
/// # Safety
/// Called from a method of that database file, so SQLite is not using the connection's
/// WAL file meanwhile.
unsafe fn drop_uncommitted(db_name: *const c_char) {
    if db_name.is_null() {
        return;
    }
    let links = links();
    let Some(link) = links
        .iter()
        .find(|l| l.db_name == db_name as usize && l.wal != 0)
    else {
        return;
    };
    // SAFETY: the buffer is the WAL file's of this same connection, which SQLite is not
    // using meanwhile (by the caller's contract); it lives until that file's close, which
    // unlinks it first (under the same lock).
    let wal = unsafe { &mut *(link.wal as *mut Wal) };
    wal.buffer.clear();
    wal.commit_page_at = None;
    wal.read_at = None;
}

/// Registers the VFS (once per process; not as the default). Errors if SQLite has no
/// `unix` VFS.
pub fn register() -> Result<(), String> {
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe; the VFS object
            // registered is leaked, so it outlives every connection.
            unsafe {
                let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
                if unix.is_null() {
                    return Err("SQLite has no unix VFS".into());
                }
                // The unix VFS's other methods use nothing of their VFS object but its
                // `mxPathname` and `pAppData`, which the copy keeps.
                UNIX.store(unix, Ordering::Release);
                let mut ours: ffi::sqlite3_vfs = *unix;
                ours.pNext = ptr::null_mut();
                ours.zName = NAME_C.as_ptr();
                ours.szOsFile = REAL_OFFSET as c_int + (*unix).szOsFile;
                ours.xOpen = Some(x_open);
                let ours = Box::leak(Box::new(ours));
                let rc = ffi::sqlite3_vfs_register(ours, 0);
                if rc != ffi::SQLITE_OK {
                    return Err(format!("registering the {NAME} VFS failed: code {rc}"));
                }
                Ok(())
            }
        })
        .clone()
}

fn unix() -> Option<*mut ffi::sqlite3_vfs> {
    let unix = UNIX.load(Ordering::Acquire);
    (!unix.is_null()).then_some(unix)
}

/// The file SQLite holds: ours, then (at [`REAL_OFFSET`]) the unix VFS's own.
///
/// Every method below is called by SQLite only on a file this VFS's `xOpen` set up (its
/// `pMethods` is [`METHODS`] only once `real` and `wal` are written) and has not closed,
/// and by one thread at a time (a file belongs to one connection, which SQLite serializes).
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    /// The unix VFS's file, inside the same allocation.
    real: *mut ffi::sqlite3_file,
    /// A WAL file's buffer (owned: from `Box::into_raw`); null for other files.
    wal: *mut Wal,
    /// A database file's name as SQLite opened it (its connection's WAL is found by it);
    /// null for other files.
    db_name: *const c_char,
}

const REAL_OFFSET: usize = std::mem::size_of::<File>().next_multiple_of(16);

/// A WAL file's writes not yet made.
#[derive(Default)]
struct Wal {
    buffer: Vec<u8>,
    /// File offset of `buffer[0]`.
    start: i64,
    /// Where the page of the commit frame whose header is buffered goes.
    commit_page_at: Option<i64>,
    /// Where the last call on the file, if a read, read from.
    read_at: Option<i64>,
}

impl Wal {
    fn end(&self) -> i64 {
        self.start + self.buffer.len() as i64
    }
}

/// What a method works with: the unix VFS's file and methods, and the WAL buffer.
struct Parts<'a> {
    real: *mut ffi::sqlite3_file,
    methods: &'a ffi::sqlite3_io_methods,
    wal: Option<&'a mut Wal>,
}

/// # Safety
/// `f` is a file this VFS opened and has not closed (see [`File`]), not in use by another
/// thread.
unsafe fn parts<'a>(f: *mut ffi::sqlite3_file) -> Parts<'a> {
    // SAFETY: by the caller's contract `f` is a set-up `File`, whose `real` is an open
    // unix file (with its methods) and whose `wal` is null or owned by it.
    unsafe {
        let file = &mut *(f as *mut File);
        let real = file.real;
        Parts {
            real,
            methods: &*(*real).pMethods,
            wal: file.wal.as_mut(),
        }
    }
}

impl Parts<'_> {
    /// Writes out the WAL buffer; on failure it is kept, to be written before anything else.
    fn flush(&mut self) -> c_int {
        let Some(wal) = self.wal.as_deref_mut() else {
            return ffi::SQLITE_OK;
        };
        wal.commit_page_at = None;
        if wal.buffer.is_empty() {
            return ffi::SQLITE_OK;
        }
        let Some(write) = self.methods.xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        for (i, chunk) in wal.buffer.chunks(MAX_WRITE).enumerate() {
            count_wal_write();
            let offset = wal.start + (i * MAX_WRITE) as i64;
            // SAFETY: `real` is the open unix file; `chunk` is `chunk.len()` bytes, which
            // fits a c_int.
            let rc = unsafe {
                write(
                    self.real,
                    chunk.as_ptr().cast(),
                    chunk.len() as c_int,
                    offset,
                )
            };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        wal.buffer.clear();
        ffi::SQLITE_OK
    }

    /// Writes out a WAL file's buffer (nothing for other files) before another call on it.
    fn settle(&mut self) -> c_int {
        if let Some(wal) = self.wal.as_deref_mut() {
            wal.read_at = None;
        }
        self.flush()
    }
}

/// Settles the file (see [`Parts::settle`]), then calls the unix method `$method` with
/// `$args`, or answers `$missing` if the unix file has none.
macro_rules! forward {
    ($f:expr, $method:ident ( $($arg:expr),* ), $missing:expr) => {{
        // SAFETY: SQLite calls methods only on files this VFS set up (see `File`).
        let mut parts = unsafe { parts($f) };
        let rc = parts.settle();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        match parts.methods.$method {
            // SAFETY: the unix file is open; the arguments are SQLite's, passed on.
            Some(method) => unsafe { method(parts.real, $($arg),*) },
            None => $missing,
        }
    }};
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    f: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(unix) = unix() else {
        return ffi::SQLITE_CANTOPEN;
    };
    let file = f as *mut File;
    // SAFETY: SQLite hands xOpen `szOsFile` bytes at `f` (our `File`, then the unix VFS's
    // file at REAL_OFFSET), 8-aligned, to fill in. `pMethods` stays null (nothing to close)
    // until the unix file is open and `real` and `wal` are written.
    unsafe {
        let real = (f as *mut u8).add(REAL_OFFSET) as *mut ffi::sqlite3_file;
        ptr::addr_of_mut!((*file).base.pMethods).write(ptr::null());
        ptr::addr_of_mut!((*real).pMethods).write(ptr::null());
        let Some(open) = (*unix).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let rc = open(unix, name, real, flags, out_flags);
        if (*real).pMethods.is_null() {
            return if rc == ffi::SQLITE_OK {
                ffi::SQLITE_CANTOPEN
            } else {
                rc
            };
        }
        if rc != ffi::SQLITE_OK {
            if let Some(close) = (*(*real).pMethods).xClose {
                close(real);
            }
            return rc;
        }
        // Where the database file (which SQLite asks when it opens the WAL) lacks
        // "powersafe overwrite", SQLite pads each commit to a sector boundary and splits the
        // last frame around a sync, which the rules above do not cover: no buffering there.
        let wal = if flags & ffi::SQLITE_OPEN_WAL != 0 && !name.is_null() {
            let db_name = ffi::sqlite3_filename_database(name) as usize;
            let mut links = links();
            let link = links.iter_mut().find(|l| l.db_name == db_name);
            let powersafe = link.as_ref().is_some_and(|l| {
                let db = l.db_real as *mut ffi::sqlite3_file;
                let characteristics = (*(*db).pMethods)
                    .xDeviceCharacteristics
                    .map_or(0, |dc| dc(db));
                characteristics & ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE != 0
            });
            match link {
                Some(link) if powersafe => {
                    let wal = Box::into_raw(Box::<Wal>::default());
                    link.wal = wal as usize;
                    wal
                }
                _ => ptr::null_mut(),
            }
        } else {
            ptr::null_mut()
        };
        let db_name = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 && !name.is_null() {
            links().push(Link {
                db_name: name as usize,
                db_real: real as usize,
                wal: 0,
            });
            name
        } else {
            ptr::null()
        };
        ptr::addr_of_mut!((*file).real).write(real);
        ptr::addr_of_mut!((*file).wal).write(wal);
        ptr::addr_of_mut!((*file).db_name).write(db_name);
        ptr::addr_of_mut!((*file).base.pMethods).write(&METHODS);
        rc
    }
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `File`; after this call SQLite never uses the file again, so its buffer
    // is freed here.
    unsafe {
        let flushed = parts(f).settle();
        let file = &mut *(f as *mut File);
        if !file.db_name.is_null() {
            links().retain(|l| l.db_real != file.real as usize);
        }
        if !file.wal.is_null() {
            for link in links().iter_mut().filter(|l| l.wal == file.wal as usize) {
                link.wal = 0;
            }
            drop(Box::from_raw(file.wal));
            file.wal = ptr::null_mut();
        }
        let real = file.real;
        let closed = match (*(*real).pMethods).xClose {
            Some(close) => close(real),
            None => ffi::SQLITE_OK,
        };
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: see `File`.
    let mut parts = unsafe { parts(f) };
    let rc = parts.settle();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    if let Some(wal) = parts.wal {
        wal.read_at = Some(offset);
    }
    match parts.methods.xRead {
        // SAFETY: the unix file is open; `buf` is SQLite's, of `amount` bytes.
        Some(read) => unsafe { read(parts.real, buf, amount, offset) },
        None => ffi::SQLITE_IOERR_READ,
    }
}

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: see `File`.
    let mut parts = unsafe { parts(f) };
    let (real, methods) = (parts.real, parts.methods);
    let direct = || match methods.xWrite {
        // SAFETY: the unix file is open; `data` is SQLite's, of `amount` bytes.
        Some(write) => unsafe { write(real, data, amount, offset) },
        None => ffi::SQLITE_IOERR_WRITE,
    };
    let Some(wal) = parts.wal.as_deref_mut() else {
        return direct();
    };
    let bytes: &[u8] = if amount > 0 {
        // SAFETY: SQLite passes `amount` readable bytes at `data`.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), amount as usize) }
    } else {
        &[]
    };
    if wal.read_at.take() == Some(offset) || bytes.is_empty() {
        // Nothing is buffered: the read wrote it out.
        count_wal_write();
        let rc = direct();
        // A commit frame's header written so (after recovery in exclusive locking mode,
        // which last read where the next frame goes) still has its page flushed as soon
        // as it comes.
        if rc == ffi::SQLITE_OK && is_commit_header(bytes) {
            wal.commit_page_at = Some(offset + FRAME_HEADER as i64);
        }
        return rc;
    }
    let follows = offset == wal.end() && wal.commit_page_at.is_none_or(|at| at == offset);
    if !wal.buffer.is_empty() && !follows {
        let rc = parts.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let Some(wal) = parts.wal.as_deref_mut() else {
        return direct();
    };
    if wal.buffer.is_empty() {
        wal.start = offset;
        if wal.commit_page_at != Some(offset) {
            wal.commit_page_at = None;
        }
    }
    wal.buffer.extend_from_slice(bytes);
    if wal.commit_page_at == Some(offset) {
        return parts.flush();
    }
    if is_commit_header(bytes) {
        wal.commit_page_at = Some(offset + FRAME_HEADER as i64);
    }
    // Not between a commit frame's header and its page: the page's write flushes both.
    if wal.buffer.len() >= MAX_BUFFERED && wal.commit_page_at.is_none() {
        return parts.flush();
    }
    ffi::SQLITE_OK
}

/// Whether a write of `bytes` is a commit frame's 24-byte header (its database size, bytes
/// 4 to 8, is not zero).
fn is_commit_header(bytes: &[u8]) -> bool {
    bytes.len() == FRAME_HEADER && bytes[4..8] != [0; 4]
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    forward!(f, xTruncate(size), ffi::SQLITE_IOERR_TRUNCATE)
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    forward!(f, xSync(flags), ffi::SQLITE_IOERR_FSYNC)
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    forward!(f, xFileSize(size), ffi::SQLITE_IOERR_FSTAT)
}

unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(f, xLock(level), ffi::SQLITE_IOERR_LOCK)
}

unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // A database file's lock goes down only once its write transaction is over: in
    // exclusive locking mode, where the WAL's write lock is not taken through xShmLock,
    // this is where an uncommitted buffer is dropped.
    // SAFETY: see `File`; this is a method of the connection's database file.
    unsafe { drop_uncommitted((*(f as *mut File)).db_name) };
    forward!(f, xUnlock(level), ffi::SQLITE_IOERR_UNLOCK)
}

unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    forward!(
        f,
        xCheckReservedLock(out),
        ffi::SQLITE_IOERR_CHECKRESERVEDLOCK
    )
}

unsafe extern "C" fn x_file_control(
    f: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    forward!(f, xFileControl(op, arg), ffi::SQLITE_NOTFOUND)
}

unsafe extern "C" fn x_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `File`.
    let parts = unsafe { parts(f) };
    match parts.methods.xSectorSize {
        // SAFETY: the unix file is open.
        Some(size) => unsafe { size(parts.real) },
        None => 4096,
    }
}

unsafe extern "C" fn x_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `File`.
    let parts = unsafe { parts(f) };
    match parts.methods.xDeviceCharacteristics {
        // SAFETY: the unix file is open.
        Some(characteristics) => unsafe { characteristics(parts.real) },
        None => 0,
    }
}

// The shared-memory methods (called on database files, never on a WAL file) go straight
// through: nothing is buffered for those files.

unsafe extern "C" fn x_shm_map(
    f: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: see `File`.
    let parts = unsafe { parts(f) };
    match parts
        .methods
        .xShmMap
        .filter(|_| parts.methods.iVersion >= 2)
    {
        // SAFETY: the unix file is open; the arguments are SQLite's.
        Some(map) => unsafe { map(parts.real, region, size, extend, out) },
        None => ffi::SQLITE_IOERR_SHMMAP,
    }
}

unsafe extern "C" fn x_shm_lock(
    f: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: see `File`.
    let parts = unsafe { parts(f) };
    // SAFETY: see `File`.
    let db_name = unsafe { (*(f as *mut File)).db_name };
    if offset == 0 && flags == ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE {
        // The connection gives up the WAL's write lock (index 0): what its WAL file still
        // buffers was not committed, as when a transaction that spilled pages rolls back.
        // Written later, it would land on the frames the next writer commits there.
        // SAFETY: this is a method of the connection's database file.
        unsafe { drop_uncommitted(db_name) };
    }
    match parts
        .methods
        .xShmLock
        .filter(|_| parts.methods.iVersion >= 2)
    {
        // SAFETY: the unix file is open.
        Some(lock) => unsafe { lock(parts.real, offset, n, flags) },
        None => ffi::SQLITE_IOERR_SHMLOCK,
    }
}

unsafe extern "C" fn x_shm_barrier(f: *mut ffi::sqlite3_file) {
    // SAFETY: see `File`.
    let parts = unsafe { parts(f) };
    if let Some(barrier) = parts
        .methods
        .xShmBarrier
        .filter(|_| parts.methods.iVersion >= 2)
    {
        // SAFETY: the unix file is open.
        unsafe { barrier(parts.real) }
    }
}

unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: see `File`.
    let parts = unsafe { parts(f) };
    match parts
        .methods
        .xShmUnmap
        .filter(|_| parts.methods.iVersion >= 2)
    {
        // SAFETY: the unix file is open.
        Some(unmap) => unsafe { unmap(parts.real, delete) },
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_fetch(
    f: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: see `File`.
    let mut parts = unsafe { parts(f) };
    let rc = parts.settle();
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    match parts.methods.xFetch.filter(|_| parts.methods.iVersion >= 3) {
        // SAFETY: the unix file is open; `out` is SQLite's.
        Some(fetch) => unsafe { fetch(parts.real, offset, amount, out) },
        None => {
            // SAFETY: `out` is SQLite's, to be written: no mapping, read it instead.
            unsafe { out.write(ptr::null_mut()) };
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn x_unfetch(f: *mut ffi::sqlite3_file, offset: i64, page: *mut c_void) -> c_int {
    // SAFETY: see `File`.
    let parts = unsafe { parts(f) };
    match parts
        .methods
        .xUnfetch
        .filter(|_| parts.methods.iVersion >= 3)
    {
        // SAFETY: the unix file is open; `page` is one its xFetch gave.
        Some(unfetch) => unsafe { unfetch(parts.real, offset, page) },
        None => ffi::SQLITE_OK,
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};
