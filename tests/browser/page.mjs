// The served page as a user meets it, in headless Chromium (Debian's, driven by playwright-core):
// draw a 1 on the canvas with the mouse, then upload a test-set image as a PNG file, and check
// that the page shows the right digit, ten probability bars and no error each time.
//
//   node tests/browser/page.mjs --mnist DIR [--index N] [--screenshot FILE] -- <server command>
//
// The server command must print `serving http://ADDR/` (as `vit-trainer serve --addr
// 127.0.0.1:0` does); it is stopped with SIGTERM at the end and must exit with status 0.
// CHROMIUM names the browser (default /usr/bin/chromium).

import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

import { fail, png, startServer, testImage } from './common.mjs';

const ANSWER_MS = 30 * 1000;

function parseArgs(argv) {
  const split = argv.indexOf('--');
  if (split < 0 || split === argv.length - 1) fail('no server command after `--`');
  const options = { index: 0, command: argv.slice(split + 1) };
  const flags = argv.slice(0, split);
  for (let i = 0; i < flags.length; i += 2) {
    const [flag, value] = [flags[i], flags[i + 1]];
    if (value === undefined) fail(`${flag} needs a value`);
    if (flag === '--mnist') options.mnist = value;
    else if (flag === '--index') options.index = Number.parseInt(value, 10);
    else if (flag === '--screenshot') options.screenshot = value;
    else fail(`unknown option ${flag}`);
  }
  if (!options.mnist) fail('--mnist DIR is required (the MNIST test files)');
  if (!(options.index >= 0 && options.index < 10000)) fail('--index must be 0-9999');
  return options;
}

/** Waits for the page's answer and checks it: `expected` shown, ten bars, no error. */
async function checkAnswer(page, expected, what) {
  await page.waitForFunction(
    () => document.getElementById('digit').textContent !== '?'
      || document.getElementById('error').textContent !== '',
    null,
    { timeout: ANSWER_MS },
  );
  const shown = await page.evaluate(() => ({
    digit: document.getElementById('digit').textContent,
    bars: document.querySelectorAll('#bars .bar').length,
    error: document.getElementById('error').textContent,
  }));
  if (shown.error !== '' || shown.digit !== String(expected) || shown.bars !== 10) {
    throw new Error(`${what}: expected ${expected} with 10 bars, the page shows ${JSON.stringify(shown)}`);
  }
  console.log(`${what}: the page shows ${shown.digit} with ${shown.bars} bars`);
}

async function run(options, url) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 620 } });
    const problems = [];
    page.on('pageerror', (error) => problems.push(error.message));
    await page.goto(url);

    // A 1, drawn as one stroke down the middle of the pad; the page predicts when it ends.
    const pad = await page.locator('#pad').boundingBox();
    await page.mouse.move(pad.x + pad.width * 0.52, pad.y + pad.height * 0.15);
    await page.mouse.down();
    for (let step = 1; step <= 20; step++) {
      const t = step / 20;
      await page.mouse.move(pad.x + pad.width * (0.52 - 0.04 * t), pad.y + pad.height * (0.15 + 0.7 * t));
    }
    await page.mouse.up();
    await checkAnswer(page, 1, 'drawn 1');

    await page.click('#clear');
    const cleared = await page.evaluate(() => [
      document.getElementById('digit').textContent,
      document.querySelectorAll('#bars .bar').length,
    ]);
    if (cleared[0] !== '?' || cleared[1] !== 0) throw new Error(`Clear left ${cleared}`);

    const { pixels, label } = testImage(options.mnist, options.index);
    await page.setInputFiles('#upload', {
      name: `mnist-test-${options.index}.png`,
      mimeType: 'image/png',
      buffer: png(pixels, 28),
    });
    await checkAnswer(page, label, `uploaded test image ${options.index}`);

    if (problems.length > 0) throw new Error(`errors on the page: ${problems.join('; ')}`);
    if (options.screenshot) {
      writeFileSync(options.screenshot, await page.screenshot({ fullPage: true }));
      console.log(`wrote ${options.screenshot}`);
    }
  } finally {
    await browser.close();
  }
}

const options = parseArgs(process.argv.slice(2));
const { server, url } = await startServer(options.command);
const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({ code, signal })));
let failure;
try {
  await run(options, url);
} catch (error) {
  failure = error;
}
server.kill('SIGTERM');
const { code, signal } = await exited;
if (failure) fail(failure.message);
if (code !== 0) fail(`the server exited with ${code ?? signal} on SIGTERM`);
console.log('browser test passed');
