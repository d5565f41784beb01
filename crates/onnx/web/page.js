// The page's behaviour: a drawing pad and an upload, each turned MNIST-style (mnist-style.js)
// and classified by model.onnx in ONNX Runtime Web, here in the browser. `window.vitPage`
// exposes the last answer and a timing loop for the browser test.

import { SIDE, fromRgba } from './mnist-style.js';

const $ = (id) => document.getElementById(id);
const pad = $('pad');
const ink = pad.getContext('2d', { willReadFrequently: true });

// Threads need a cross-origin-isolated page, which most static hosts do not give.
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;

const page = { last: null, ready: null, bench };
window.vitPage = page;
let session;
page.ready = ort.InferenceSession.create('model.onnx', { executionProviders: ['wasm'] }).then(
  (created) => {
    session = created;
    $('status').textContent = `model loaded: input ${session.inputNames[0]}, outputs ${session.outputNames.join(', ')}`;
  },
  (failure) => {
    $('status').textContent = `cannot load model.onnx: ${failure.message}`;
    throw failure;
  },
);

const blank = () => {
  ink.fillStyle = '#000';
  ink.fillRect(0, 0, pad.width, pad.height);
};
blank();
ink.lineWidth = 18;
ink.lineCap = 'round';
ink.strokeStyle = '#fff';
let drawing = false;
const at = (e) => {
  const r = pad.getBoundingClientRect();
  return [e.clientX - r.left, e.clientY - r.top];
};
pad.addEventListener('pointerdown', (e) => {
  drawing = true;
  ink.beginPath();
  ink.moveTo(...at(e));
});
pad.addEventListener('pointermove', (e) => {
  if (drawing) {
    ink.lineTo(...at(e));
    ink.stroke();
  }
});
const end = () => {
  if (drawing) {
    drawing = false;
    classify(ink.getImageData(0, 0, pad.width, pad.height), 'drawing');
  }
};
pad.addEventListener('pointerup', end);
pad.addEventListener('pointerleave', end);

/** Forgets the last answer: no digit, no bars, no input shown. */
function forget() {
  page.last = null;
  $('digit').textContent = '?';
  for (const id of ['bars', 'confidence', 'error', 'timing']) $(id).innerHTML = '';
  const seen = $('seen');
  seen.getContext('2d').clearRect(0, 0, seen.width, seen.height);
}

$('clear').onclick = () => {
  blank();
  forget();
};

$('upload').onchange = async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  e.target.value = ''; // the same file may be chosen again
  blank();
  let picture;
  try {
    // The file's own pixels: no colour management, no premultiplied alpha.
    picture = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch {
    showError(`${file.name}: cannot read as an image`);
    return;
  }
  const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
  const [w, h] = [picture.width * scale, picture.height * scale];
  ink.imageSmoothingEnabled = false;
  ink.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  const native = new OffscreenCanvas(picture.width, picture.height).getContext('2d');
  native.drawImage(picture, 0, 0);
  classify(native.getImageData(0, 0, picture.width, picture.height), file.name);
};

/** Classifies `image` (ImageData) and shows the answer, or why there is none. */
async function classify(image, what) {
  const pixels = fromRgba(image.width, image.height, image.data);
  if (pixels === null) {
    showError(`${what}: no digit found: the image is blank`);
    return;
  }
  try {
    await page.ready;
    const started = performance.now();
    const probabilities = await predict(pixels);
    const ms = performance.now() - started;
    const digit = probabilities.indexOf(Math.max(...probabilities));
    page.last = { what, input: Array.from(pixels), probabilities, digit, ms };
    show(page.last);
  } catch (failure) {
    showError(`${what}: ${failure.message}`);
  }
}

/** The ten probabilities the model gives the 784 MNIST-style bytes `pixels`. */
async function predict(pixels) {
  const input = new ort.Tensor('float32', Float32Array.from(pixels), [1, 1, SIDE, SIDE]);
  const outputs = await session.run({ [session.inputNames[0]]: input });
  return Array.from(outputs.probabilities.data);
}

/** Median and 90th percentile of `runs` predictions of the last input, in milliseconds. */
async function bench(runs) {
  await page.ready;
  const pixels = Uint8Array.from(page.last?.input ?? new Array(SIDE * SIDE).fill(0));
  await predict(pixels); // warm-up
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await predict(pixels);
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  const at = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))];
  return { runs, p50_ms: at(0.5), p90_ms: at(0.9), min_ms: times[0] };
}

function showError(message) {
  forget();
  $('error').textContent = message;
}

function show({ input, probabilities, digit, ms }) {
  $('error').textContent = '';
  $('digit').textContent = digit;
  $('confidence').textContent = `${(100 * probabilities[digit]).toFixed(1)} %`;
  $('timing').textContent = `${ms.toFixed(1)} ms in this browser`;
  $('bars').innerHTML = probabilities
    .map((q, d) => `<div class="bar"><span>${d}</span><span style="width:${Math.round(200 * q)}px"></span><span>${(100 * q).toFixed(1)}</span></div>`)
    .join('');
  const seen = $('seen').getContext('2d');
  const cell = $('seen').width / SIDE;
  for (let y = 0; y < SIDE; y++) {
    for (let x = 0; x < SIDE; x++) {
      const v = input[y * SIDE + x];
      seen.fillStyle = `rgb(${v},${v},${v})`;
      seen.fillRect(x * cell, y * cell, cell, cell);
    }
  }
}
