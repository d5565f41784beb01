// The static page of `cargo xtask web` in headless Chromium (Debian's, driven by playwright-core),
// served by a plain file server with no API: draw a digit, upload MNIST test images (as they
// are, and larger or smaller in dark ink on light paper, like a photo) and a blank picture. For
// every picture the page classified, the same picture goes to `POST /api/predict` of the Rust server
// on the same run: the page's input bytes must equal the server's, and its probabilities agree
// within 1e-3. Last, the time per prediction in the page.
//
//   node tests/browser/static-page.mjs --site DIR --mnist DIR [--report FILE] [--screenshot FILE]
//     -- <server command>
//
// The server command must print `serving http://ADDR/` (as `vit-trainer serve --addr
// 127.0.0.1:0` does); it is stopped with SIGTERM at the end. CHROMIUM names the browser.

import { createReadStream, existsSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize } from 'node:path';
import { chromium } from 'playwright-core';

import { fail, png, startServer, testImage } from './common.mjs';

const ANSWER_MS = 60 * 1000;
const TOLERANCE = 1e-3;
const UPLOADED = [0, 1, 2, 3, 4];
const TYPES = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream',
};

function parseArgs(argv) {
  const split = argv.indexOf('--');
  if (split < 0 || split === argv.length - 1) fail('no server command after `--`');
  const options = { command: argv.slice(split + 1) };
  const flags = argv.slice(0, split);
  for (let i = 0; i < flags.length; i += 2) {
    const [flag, value] = [flags[i], flags[i + 1]];
    if (value === undefined) fail(`${flag} needs a value`);
    if (flag === '--site') options.site = value;
    else if (flag === '--mnist') options.mnist = value;
    else if (flag === '--report') options.report = value;
    else if (flag === '--screenshot') options.screenshot = value;
    else fail(`unknown option ${flag}`);
  }
  if (!options.site || !existsSync(join(options.site, 'index.html'))) {
    fail('--site DIR is required: the folder `cargo xtask web` wrote');
  }
  if (!options.mnist) fail('--mnist DIR is required (the MNIST test files)');
  return options;
}

/** Serves the files of `root` on loopback, like any static host; resolves to its URL. */
function serveFolder(root) {
  const server = createServer((request, response) => {
    const path = normalize(decodeURIComponent(new URL(request.url, 'http://x').pathname));
    const file = join(root, path.endsWith('/') ? `${path}index.html` : path);
    if (!file.startsWith(normalize(root)) || !existsSync(file) || !statSync(file).isFile()) {
      response.writeHead(404).end('not found');
      return;
    }
    response.writeHead(200, { 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream' });
    createReadStream(file).pipe(response);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}/` }));
  });
}

/** MNIST test image `pixels` drawn `scale`× in dark ink on light paper, with margins. */
function onPaper(pixels, scale) {
  const margin = 13;
  const [width, height] = [28 * scale + 2 * margin, 28 * scale + 3 * margin];
  const paper = Buffer.alloc(width * height, 235);
  for (let y = 0; y < 28 * scale; y++) {
    for (let x = 0; x < 28 * scale; x++) {
      const v = pixels[Math.floor(y / scale) * 28 + Math.floor(x / scale)];
      paper[(y + margin) * width + x + margin] = 235 - Math.round((v * 200) / 255);
    }
  }
  return png(paper, width, height);
}

/** Runs `act` and waits for the page's next answer (or error), which it returns. */
async function answer(page, act) {
  await page.evaluate(() => {
    window.vitPage.last = null;
    document.getElementById('error').textContent = '';
  });
  await act();
  await page.waitForFunction(
    () => window.vitPage.last !== null || document.getElementById('error').textContent !== '',
    null,
    { timeout: ANSWER_MS },
  );
  return page.evaluate(() => ({ last: window.vitPage.last, error: document.getElementById('error').textContent }));
}

/** The Rust server's answer for the picture `bytes`. */
async function serverAnswer(api, bytes) {
  const response = await fetch(new URL('api/predict', api), {
    method: 'POST',
    headers: { 'Content-Type': 'image/png' },
    body: bytes,
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`the server refused the picture: ${JSON.stringify(json)}`);
  return json;
}

/** Compares the page's answer with the server's for the same picture; returns the differences. */
function compare(what, pageAnswer, server) {
  const input = server.input.flat();
  const differentBytes = input.filter((v, i) => v !== pageAnswer.input[i]).length;
  const diff = Math.max(...server.probabilities.map((p, d) => Math.abs(p - pageAnswer.probabilities[d])));
  const line = `${what}: page ${pageAnswer.digit}, server ${server.digit}; input bytes that differ: `
    + `${differentBytes}/784; max probability diff ${diff.toExponential(2)}; ${pageAnswer.ms.toFixed(1)} ms`;
  console.log(line);
  if (differentBytes > 0 || diff > TOLERANCE || pageAnswer.digit !== server.digit) {
    throw new Error(`${line} (tolerance ${TOLERANCE})`);
  }
  return { what, digit: pageAnswer.digit, max_probability_diff: diff, ms: pageAnswer.ms };
}

async function run(options, site, api) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-background-networking', '--disable-component-update'],
  });
  const report = { site, cases: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
    const problems = [];
    const elsewhere = [];
    page.on('pageerror', (error) => problems.push(error.message));
    page.on('request', (request) => {
      if (!request.url().startsWith(site) && !request.url().startsWith('data:')) elsewhere.push(request.url());
    });
    await page.goto(site);
    await page.evaluate(() => window.vitPage.ready);

    // A 7: a bar across the top, then a stroke down to the left; the page answers on release.
    const pad = await page.locator('#pad').boundingBox();
    const to = (x, y) => page.mouse.move(pad.x + pad.width * x, pad.y + pad.height * y, { steps: 12 });
    const drawn = await answer(page, async () => {
      await to(0.3, 0.25);
      await page.mouse.down();
      await to(0.7, 0.25);
      await to(0.45, 0.8);
      await page.mouse.up();
    });
    if (!drawn.last) throw new Error(`drawn 7: the page shows no answer: ${drawn.error}`);
    const padPng = await page.evaluate(() => document.getElementById('pad').toDataURL('image/png'));
    const padBytes = Buffer.from(padPng.split(',')[1], 'base64');
    report.cases.push(compare('drawn 7', drawn.last, await serverAnswer(api, padBytes)));
    if (options.screenshot) {
      writeFileSync(options.screenshot, await page.screenshot({ fullPage: true }));
      console.log(`wrote ${options.screenshot}`);
    }

    const pictures = UPLOADED.map((index) => {
      const { pixels, label } = testImage(options.mnist, index);
      return { name: `mnist-test-${index}.png`, label, bytes: png(pixels, 28) };
    });
    // Larger than MNIST (shrunk to 20×20) and smaller (enlarged): both ways of the resize.
    for (const [index, scale] of [[5, 4], [6, 1]]) {
      const { pixels, label } = testImage(options.mnist, index);
      pictures.push({ name: `mnist-test-${index}-on-paper-${scale}x.png`, label, bytes: onPaper(pixels, scale) });
    }
    for (const picture of pictures) {
      const shown = await answer(page, () =>
        page.setInputFiles('#upload', { name: picture.name, mimeType: 'image/png', buffer: picture.bytes }));
      if (!shown.last) throw new Error(`${picture.name}: the page shows no answer: ${shown.error}`);
      const compared = compare(`${picture.name} (label ${picture.label})`, shown.last, await serverAnswer(api, picture.bytes));
      report.cases.push({ ...compared, label: picture.label });
    }

    const blank = await answer(page, () =>
      page.setInputFiles('#upload', { name: 'blank.png', mimeType: 'image/png', buffer: png(Buffer.alloc(784), 28) }));
    const cleared = await page.evaluate(() => document.getElementById('digit').textContent);
    if (blank.last || !blank.error.includes('blank') || cleared !== '?') {
      throw new Error(`a blank picture: expected an error naming it blank, the page shows ${JSON.stringify(blank)}`);
    }
    console.log(`blank.png: the page says "${blank.error}"`);

    report.browser_timing = await page.evaluate(() => window.vitPage.bench(300));
    console.log(`time per prediction in the page (batch 1, ${report.browser_timing.runs} runs): `
      + `p50 ${report.browser_timing.p50_ms.toFixed(2)} ms, p90 ${report.browser_timing.p90_ms.toFixed(2)} ms`);

    if (problems.length > 0) throw new Error(`errors on the page: ${problems.join('; ')}`);
    if (elsewhere.length > 0) throw new Error(`the page fetched from other hosts: ${elsewhere.join(', ')}`);
    report.browser = browser.version();
  } finally {
    await browser.close();
  }
  return report;
}

const options = parseArgs(process.argv.slice(2));
const folder = await serveFolder(options.site);
const { server, url } = await startServer(options.command);
const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({ code, signal })));
let failure;
let report;
try {
  report = await run(options, folder.url, url);
} catch (error) {
  failure = error;
}
server.kill('SIGTERM');
folder.server.close();
await exited;
if (failure) fail(failure.message);
if (options.report) writeFileSync(options.report, `${JSON.stringify(report, null, 2)}\n`);
console.log('static page test passed');
