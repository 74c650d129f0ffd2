// Runs Python code on real MicroPython (the npm WebAssembly port) for tests and benchmarks.
// stdin: JSON {"files": {"/path/in/vfs.py": "source", ...}, "binary_files": {"/lib/x.mpy": "base64"},
//              "code": "python source" or ["chunk", "chunk", ...]}
// Chunks run one after another in the same interpreter. gc.collect() only frees memory
// between chunks on this port (it cannot scan the stack mid-run), so heap measurements
// put gc.collect() at the start of a chunk of its own.
// stdout: what the code printed. Exit status 1 with the traceback on stderr if it raised.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));

let out = "";
const mp = await loadMicroPython({ stdout: (line) => { out += line + "\n"; }, linebuffer: true });
const put = (path, data) => {
  const dir = path.substring(0, path.lastIndexOf("/"));
  if (dir) mp.FS.mkdirTree(dir);
  mp.FS.writeFile(path, data);
};
for (const [path, text] of Object.entries(job.files || {})) put(path, text);
for (const [path, b64] of Object.entries(job.binary_files || {})) put(path, Buffer.from(b64, "base64"));
try {
  for (const chunk of Array.isArray(job.code) ? job.code : [job.code]) mp.runPython(chunk);
  process.stdout.write(out);
} catch (err) {
  process.stdout.write(out);
  process.stderr.write(String(err.message || err) + "\n");
  process.exitCode = 1;
}
