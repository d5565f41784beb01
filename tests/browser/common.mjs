// What the browser tests share: failing with a message, MNIST test images as PNG files, and
// starting a server command that prints the address it serves.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { crc32, deflateSync, gunzipSync } from 'node:zlib';

const STARTUP_MS = 15 * 60 * 1000; // `cargo xtask serve` may build the trainer first

export function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

/** Test image `index` of MNIST: its 784 pixels and its label. */
export function testImage(dir, index) {
  const read = (name) => {
    try {
      return gunzipSync(readFileSync(join(dir, name)));
    } catch (error) {
      fail(`${join(dir, name)}: ${error.message}`);
    }
  };
  const images = read('t10k-images-idx3-ubyte.gz');
  const labels = read('t10k-labels-idx1-ubyte.gz');
  const pixels = images.subarray(16 + 784 * index, 16 + 784 * (index + 1));
  return { pixels, label: labels[8 + index] };
}

/** A grey-scale PNG of `pixels` (`width`×`height`, one byte each, row by row). */
export function png(pixels, width, height = width) {
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth; colour type 0 (grey), default compression, filter, no interlace
  const rows = Buffer.alloc((width + 1) * height);
  for (let y = 0; y < height; y++) {
    rows[y * (width + 1)] = 0; // filter: none
    Buffer.from(pixels.subarray(y * width, (y + 1) * width)).copy(rows, y * (width + 1) + 1);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(rows)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Starts the server; resolves to it and its base URL once it prints its address. */
export function startServer(command) {
  const server = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the server printed no address')), STARTUP_MS);
    server.on('exit', (code) => reject(new Error(`the server exited (${code}) before serving`)));
    createInterface({ input: server.stdout }).on('line', (line) => {
      console.log(`server: ${line}`);
      const url = line.split(/\s+/).find((word) => word.startsWith('http://'));
      if (url) {
        clearTimeout(timer);
        server.removeAllListeners('exit');
        resolve({ server, url });
      }
    });
  });
}
