// A virtual MicroPython board for tests and the simulator: real MicroPython (the npm
// WebAssembly port) behind a serial console, flashed and reset with the real mpremote.
//
//   node virtual_device.mjs --tty-fd N --flash DIR --shims DIR --bridge tcp_bridge.py --python EXE
//
// - Console: the raw REPL (the runtime's replInit / replProcessChar) on fd N, the master side
//   of a pseudo-terminal opened by simulator/virtual_device.py; mpremote opens the slave side.
//   Everything the board prints also goes to stderr (the harness logs it to a file).
// - Flash: the interpreter's in-memory filesystem is loaded from DIR at every boot, and every
//   file closed after writing, renamed, removed or created is mirrored to DIR at once, so the
//   files survive soft resets, machine.reset() and a kill -9 (a power cut) alike.
// - Boot: power-on and machine.reset() run boot.py, then main.py; a soft reset (Ctrl-D in the
//   raw REPL, which mpremote sends) runs boot.py only, as MicroPython does in raw REPL mode.
// - Network: the `_vdev` JS module gives the board's socket shim TCP connections, each one
//   a pair of FIFOs to a small Python bridge process (simulator/tcp_bridge.py): Node has no
//   synchronous sockets, but it can read and write FIFOs synchronously.
// - UARTs: --uart ID=PATH,... gives machine.UART(ID) a serial line, a pseudo-terminal whose
//   other end is a peripheral's emulator (the LoRaWAN modem of simulator/lorawan/).
// - Board shims (machine, network, socket/usocket, time) live in DIR --shims, mounted like
//   frozen modules: first on sys.path, not on the flash.
// - Ctrl-C and the watchdog: whenever a program sleeps, waits on the network or feeds the
//   watchdog, the shims look for Ctrl-C on the console (KeyboardInterrupt, so mpremote can
//   stop main.py as on a real board) and reset the board if the watchdog has starved.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
const ttyFd = Number(args["tty-fd"]);
const flashDir = path.resolve(args.flash);
const shimsDir = path.resolve(args.shims);
const heapSize = Number(args.heap || 131072);
const uniqueId = args["unique-id"] || "0badc0de";
const MOUNT = "/flash";  // where the board's files live in the interpreter (cwd)
const SHIMS = "/.board";

const sleeper = new Int32Array(new SharedArrayBuffer(4));
const sleepMs = (ms) => Atomics.wait(sleeper, 0, 0, ms);

// -- console -------------------------------------------------------------------------------

function consoleWrite(bytes) {
  fs.writeSync(2, bytes);
  try {
    fs.writeSync(ttyFd, bytes);
  } catch (err) {
    if (err.code !== "EAGAIN") throw err;  // nobody is reading the port: the bytes are lost, as on a UART
  }
}

// -- flash: the in-memory filesystem, mirrored to the host directory -------------------------

function hostPath(p) {
  const full = path.posix.resolve(MOUNT, p);
  if (!full.startsWith(MOUNT + "/")) return null;  // outside the flash (/tmp, /dev, ...): not kept
  return path.join(flashDir, full.slice(MOUNT.length + 1));
}

function loadFlash(FS, hostDir, vfsDir) {
  FS.mkdirTree(vfsDir);
  for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
    const from = path.join(hostDir, entry.name), to = vfsDir + "/" + entry.name;
    if (entry.isDirectory()) loadFlash(FS, from, to);
    else FS.writeFile(to, fs.readFileSync(from));
  }
}

function mirrorWrites(FS) {
  const wrap = (name, after) => {
    const original = FS[name];
    FS[name] = (...a) => { const r = original.apply(FS, a); after(...a); return r; };
  };
  wrap("close", (stream) => {
    const target = stream.path && (stream.flags & 3) !== 0 && hostPath(stream.path);  // opened for writing
    if (target) {
      const tmp = target + ".mirror";
      fs.writeFileSync(tmp, FS.readFile(stream.path));
      fs.renameSync(tmp, target);  // the host copy is never half-written
    }
  });
  wrap("rename", (from, to) => { const a = hostPath(from), b = hostPath(to); if (a && b) fs.renameSync(a, b); });
  wrap("unlink", (p) => { const t = hostPath(p); if (t) fs.rmSync(t, { force: true }); });
  wrap("mkdir", (p) => { const t = hostPath(p); if (t) fs.mkdirSync(t, { recursive: true }); });
  wrap("rmdir", (p) => { const t = hostPath(p); if (t) fs.rmSync(t, { recursive: true, force: true }); });
}

// Emscripten numbers errors its own way (ENOENT is 44); MicroPython's errno module and every
// real board use MicroPython's numbers (ENOENT is 2), and so does mpremote when it reads an
// OSError. Renumber what the filesystem raises to the interpreter, at the outermost call only:
// the filesystem's own code compares its numbers internally.
const MICROPYTHON_ERRNO = { 63: 1, 44: 2, 27: 4, 29: 5, 8: 9, 6: 11, 48: 12, 2: 13, 10: 16, 20: 17, 75: 18, 43: 19,
                            54: 20, 31: 21, 28: 22, 33: 24, 22: 27, 51: 28, 70: 29, 69: 30, 55: 39, 37: 36 };

function renumberErrors(FS) {
  let depth = 0;
  for (const name of Object.keys(FS)) {
    const original = FS[name];
    if (typeof original !== "function" || /^[A-Z]/.test(name)) continue;  // skip the classes
    FS[name] = function (...a) {
      depth++;
      try {
        return original.apply(FS, a);
      } catch (err) {
        if (depth === 1 && err instanceof FS.ErrnoError) err.errno = MICROPYTHON_ERRNO[err.errno] ?? err.errno;
        throw err;
      } finally {
        depth--;
      }
    };
  }
}

// -- network: TCP connections through FIFO bridges --------------------------------------------

const connections = new Map();
let nextConnection = 1;

function readSome(fd, n) {
  const buf = Buffer.alloc(n);
  try {
    return buf.subarray(0, fs.readSync(fd, buf, 0, n, null));  // length 0: end of stream
  } catch (err) {
    if (err.code === "EAGAIN") return null;
    throw err;
  }
}

// Wait for bytes: spin briefly (an MQTT acknowledgement usually arrives within microseconds),
// then sleep in growing steps up to 1 ms. timeoutMs < 0 waits for ever.
function readWait(fd, n, timeoutMs) {
  const start = Date.now();
  let pause = 0.01;
  for (;;) {
    const data = readSome(fd, n);
    if (data !== null) return data;
    if (timeoutMs >= 0 && Date.now() - start >= timeoutMs) return null;
    sleepMs(pause);
    pause = Math.min(pause * 2, 1);
  }
}

const net = {
  // Returns a connection id (> 0) or minus an errno.
  connect(host, port) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vdev-"));
    const toBoard = path.join(dir, "to-board"), fromBoard = path.join(dir, "from-board");
    execFileSync("mkfifo", [toBoard, fromBoard]);
    const rfd = fs.openSync(toBoard, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const child = spawn(args.python, [args.bridge, String(host), String(port), toBoard, fromBoard],
                        { stdio: ["ignore", "ignore", "inherit"] });
    child.unref();
    const wfd = fs.openSync(fromBoard, "w");  // returns once the bridge has opened its end
    let status = "";
    while (!status.endsWith("\n")) {
      const data = readWait(rfd, 1, 15000);
      if (data === null || data.length === 0) { status = "ERR 110\n"; break; }
      status += data.toString();
    }
    fs.rmSync(dir, { recursive: true, force: true });  // both ends are open: the names can go
    if (!status.startsWith("OK")) {
      fs.closeSync(rfd); fs.closeSync(wfd);
      return -Number(status.split(" ")[1]);
    }
    const id = nextConnection++;
    connections.set(id, { rfd, wfd });
    return id;
  },
  send(id, hex) {
    const conn = connections.get(id);
    if (!conn) return -9;  // EBADF
    try {
      fs.writeSync(conn.wfd, Buffer.from(hex, "hex"));
    } catch (err) {
      return err.code === "EPIPE" ? -104 : -5;  // the bridge is gone: ECONNRESET
    }
    return hex.length / 2;
  },
  // Hex of up to n bytes; "" at the end of the stream; null when nothing came within timeoutMs.
  recv(id, n, timeoutMs) {
    const conn = connections.get(id);
    if (!conn) return "";
    const data = readWait(conn.rfd, n, timeoutMs);
    return data === null ? null : data.toString("hex");
  },
  close(id) {
    const conn = connections.get(id);
    if (!conn) return;
    connections.delete(id);
    fs.closeSync(conn.wfd);
    fs.closeSync(conn.rfd);
  },
};

// -- UARTs: serial lines to the board's peripherals (a LoRaWAN modem) --------------------------

// --uart "2=/dev/pts/7,1=/dev/pts/9": machine.UART(2) reads and writes the first path, a
// pseudo-terminal whose other side is the peripheral's emulator (simulator/lorawan/modem_line.py).
const uartPaths = Object.fromEntries((args.uart || "").split(",").filter(Boolean).map((item) => {
  const at = item.indexOf("=");
  return [Number(item.slice(0, at)), item.slice(at + 1)];
}));
const uarts = new Map();
// --rs485 "1=4": UART(1) drives an RS-485 transceiver whose driver-enable (DE) pin is GPIO 4.
const dePins = Object.fromEntries((args.rs485 || "").split(",").filter(Boolean).map((item) => item.split("=").map(Number)));

const serial = {
  // 0 when the UART is wired, minus an errno when the board has no such UART.
  uart_open(id) {
    if (!(id in uartPaths)) return -19;  // ENODEV
    if (!uarts.has(id)) uarts.set(id, fs.openSync(uartPaths[id], fs.constants.O_RDWR | fs.constants.O_NOCTTY |
                                                  fs.constants.O_NONBLOCK));
    return 0;
  },
  uart_de(id) {
    return id in dePins ? dePins[id] : -1;
  },
  uart_write(id, hex) {
    const data = Buffer.from(hex, "hex");
    for (let done = 0; done < data.length;) {
      try {
        done += fs.writeSync(uarts.get(id), data, done);
      } catch (err) {
        if (err.code !== "EAGAIN") throw err;
        sleepMs(1);  // the line is full: as a UART's FIFO, wait for it to drain
      }
    }
    return data.length;
  },
  // Hex of up to n bytes, "" when nothing came within timeoutMs.
  uart_read(id, n, timeoutMs) {
    let data;
    try {
      data = readWait(uarts.get(id), n, timeoutMs);
    } catch (err) {
      if (err.code !== "EIO") throw err;
      return "";  // nobody on the other end of the line: nothing to read, as on an unwired UART
    }
    return data === null || data.length === 0 ? "" : data.toString("hex");
  },
};

// -- the board -----------------------------------------------------------------------------

// Console input read while the program runs (looking for Ctrl-C), kept for the REPL.
const pendingInput = [];

// True when Ctrl-C came in on the console: the board's shims then raise KeyboardInterrupt,
// as MicroPython does when Ctrl-C interrupts a running main.py (mpremote relies on it).
function interrupted() {
  const buf = Buffer.alloc(256);
  let n;
  try {
    n = fs.readSync(ttyFd, buf, 0, buf.length, null);
  } catch (err) {
    if (err.code === "EAGAIN" || err.code === "EIO") return false;
    throw err;
  }
  const chunk = [...buf.subarray(0, n)];
  const at = chunk.indexOf(3);
  pendingInput.push(...(at >= 0 ? chunk.slice(at + 1) : chunk));
  return at >= 0;
}

let resetRequested = false;
let resetCause = 1;  // machine.PWRON_RESET; kept across reboots for machine.reset_cause()
let watchdog = null;  // {timeoutMs, fedAt}

const board = {
  ...net,
  ...serial,
  unique_id: () => uniqueId,
  interrupted,
  reset: (cause) => { resetRequested = true; resetCause = cause; },
  reset_cause: () => resetCause,
  wdt_start: (timeoutMs) => { watchdog = { timeoutMs, fedAt: Date.now() }; },
  wdt_feed: () => { if (watchdog) watchdog.fedAt = Date.now(); },
  // Checked by the board shims (machine._poll): a starved watchdog resets the board.
  wdt_expired: () => watchdog !== null && Date.now() - watchdog.fedAt > watchdog.timeoutMs,
};

async function boot(runMain) {
  for (const id of [...connections.keys()]) net.close(id);
  for (const fd of uarts.values()) fs.closeSync(fd);  // a reset drops what the UART held
  uarts.clear();
  watchdog = null;
  resetRequested = false;
  const mp = await loadMicroPython({ heapsize: heapSize, linebuffer: false, stdout: consoleWrite });
  loadFlash(mp.FS, shimsDir, SHIMS);
  loadFlash(mp.FS, flashDir, MOUNT);
  mirrorWrites(mp.FS);
  renumberErrors(mp.FS);
  mp.registerJsModule("_vdev", board);
  mp.runPython(`import os, sys\nos.chdir("${MOUNT}")\nsys.path.insert(0, "${SHIMS}")\nsys.path.append("${MOUNT}/lib")`);
  for (const script of runMain ? ["boot.py", "main.py"] : ["boot.py"]) {
    if (resetRequested || !fs.existsSync(path.join(flashDir, script))) continue;
    try {
      mp.runPython(fs.readFileSync(path.join(flashDir, script), "utf8"));
    } catch (err) {
      if (err.name !== "PythonError") throw err;
      if (err.type !== "SystemExit") consoleWrite(Buffer.from(String(err.message).replace(/\n/g, "\r\n")));
    }
  }
  return mp;
}

let mp = await boot(true);
while (resetRequested) mp = await boot(true);
mp.replInit();
const input = Buffer.alloc(256);
for (;;) {
  let n;
  if (pendingInput.length) {
    n = Math.min(pendingInput.length, input.length);
    input.set(pendingInput.splice(0, n));
  } else {
    try {
      n = fs.readSync(ttyFd, input, 0, input.length, null);
    } catch (err) {
      if (err.code !== "EAGAIN" && err.code !== "EIO") throw err;
      sleepMs(2);  // idle console
      continue;
    }
  }
  let i = 0;
  if (n >= 3 && input[0] === 5 && input[1] === 65 && input[2] === 1) {
    // mpremote asks for raw-paste mode, which this port serves with a blocking read that
    // would hang the board: answer "not supported", and mpremote sends plain raw REPL input.
    consoleWrite(Buffer.from("R\x00"));
    i = 3;
  }
  for (; i < n; i++) {
    const exit = mp.replProcessChar(input[i]);
    if (resetRequested) {  // machine.reset(): a hard reset runs main.py
      mp = await boot(true);
      while (resetRequested) mp = await boot(true);
      mp.replInit();
      break;
    }
    if (exit) {  // Ctrl-D in the raw REPL: soft reset, back into the raw REPL
      consoleWrite(Buffer.from("MPY: soft reboot\r\n"));
      resetCause = 5;  // machine.SOFT_RESET
      mp = await boot(false);
      mp.replInit();
      mp.replProcessChar(1);
    }
  }
}
