// Any picture of a digit as MNIST shows one: gray, light ink on black, the ink cropped, scaled
// into a 20×20 box and centred by its centre of mass in 28×28. A port of
// crates/model/src/mnist_style.rs (and of the `image` crate's Triangle resize it calls), with the
// same integer and float32 arithmetic (Math.fround), so that the page feeds the model the same
// bytes as `vit-trainer infer` and `POST /api/predict` for the same picture.

export const SIDE = 28;
const DIGIT_BOX = 20;
const f32 = Math.fround;

/**
 * The 784 MNIST-style bytes of an RGBA picture (`width`×`height`, 4 bytes a pixel, as canvas
 * ImageData holds it), or null when the picture is blank (one colour throughout).
 */
export function fromRgba(width, height, rgba) {
  const gray = flattenAlpha(width, height, rgba);
  const background = borderMedian(width, height, gray);
  const lightBackground = background > 127;
  if (width === SIDE && height === SIDE && !lightBackground) {
    return gray.some((v) => v > 0) ? gray : null;
  }

  // Ink is how far a pixel is from the background, stretched to 0..=255.
  const inkOf = lightBackground
    ? (v) => Math.max(background - v, 0)
    : (v) => Math.max(v - background, 0);
  let darkest = 0;
  for (const v of gray) darkest = Math.max(darkest, inkOf(v));
  if (darkest === 0) return null;
  const ink = gray.map((v) => Math.floor((inkOf(v) * 255) / darkest));

  const [x0, y0, x1, y1] = inkBounds(width, height, ink);
  const [cw, ch] = [x1 - x0 + 1, y1 - y0 + 1];
  const crop = new Uint8Array(cw * ch);
  for (let y = 0; y < ch; y++) {
    crop.set(ink.subarray((y0 + y) * width + x0, (y0 + y) * width + x0 + cw), y * cw);
  }
  const scale = f32(DIGIT_BOX / Math.max(cw, ch));
  const clampBox = (v) => Math.min(Math.max(v, 1), DIGIT_BOX);
  const dw = clampBox(roundHalfAway(f32(cw * scale)));
  const dh = clampBox(roundHalfAway(f32(ch * scale)));
  const digit = resizeTriangle(crop, cw, ch, dw, dh);

  // Put the digit's centre of mass at the image centre, staying inside the frame.
  const [cx, cy] = centreOfMass(digit, dw, dh);
  const centre = f32(SIDE / 2);
  const left = Math.min(Math.max(roundHalfAway(f32(centre - cx)), 0), SIDE - dw);
  const top = Math.min(Math.max(roundHalfAway(f32(centre - cy)), 0), SIDE - dh);
  const canvas = new Uint8Array(SIDE * SIDE);
  for (let y = 0; y < dh; y++) {
    canvas.set(digit.subarray(y * dw, (y + 1) * dw), (top + y) * SIDE + left);
  }
  return canvas;
}

/** Gray levels (the `image` crate's integer luma), transparent parts shown over white paper. */
function flattenAlpha(width, height, rgba) {
  const gray = new Uint8Array(width * height);
  for (let i = 0; i < gray.length; i++) {
    const [r, g, b, alpha] = rgba.subarray(4 * i, 4 * i + 4);
    const luma = Math.min(Math.floor((2126 * r + 7152 * g + 722 * b) / 10000), 255);
    gray[i] = Math.floor((luma * alpha + 255 * (255 - alpha)) / 255);
  }
  return gray;
}

function borderMedian(width, height, gray) {
  const border = [];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (x === 0 || y === 0 || x === width - 1 || y === height - 1) border.push(gray[y * width + x]);
    }
  }
  border.sort((a, b) => a - b);
  return border[Math.floor(border.length / 2)];
}

/** The smallest rectangle (inclusive corners) holding every pixel with visible ink. */
function inkBounds(width, height, ink) {
  let [x0, y0, x1, y1] = [Infinity, Infinity, 0, 0];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (ink[y * width + x] > 32) {
        [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
      }
    }
  }
  return [x0, y0, x1, y1];
}

function centreOfMass(image, width, height) {
  let [mass, sx, sy] = [0, 0, 0];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const m = image[y * width + x];
      mass = f32(mass + m);
      sx = f32(sx + f32(m * f32(x + 0.5)));
      sy = f32(sy + f32(m * f32(y + 0.5)));
    }
  }
  if (mass === 0) return [f32(width / 2), f32(height / 2)];
  return [f32(sx / mass), f32(sy / mass)];
}

/** Rust's `f32::round`: halves away from zero (Math.round takes them towards +∞). */
function roundHalfAway(v) {
  return Math.sign(v) * Math.round(Math.abs(v));
}

/**
 * `image::imageops::resize(…, FilterType::Triangle)`: columns first into float32, then rows,
 * rounded to bytes; a kernel widened by the scale when shrinking.
 */
function resizeTriangle(pixels, width, height, newWidth, newHeight) {
  if (width === newWidth && height === newHeight) return pixels.slice();
  const columns = new Float32Array(width * newHeight);
  for (const [out, left, weights] of taps(height, newHeight)) {
    for (let x = 0; x < width; x++) {
      let t = 0;
      weights.forEach((w, i) => {
        t = f32(t + f32(pixels[(left + i) * width + x] * w));
      });
      columns[out * width + x] = t;
    }
  }
  const result = new Uint8Array(newWidth * newHeight);
  for (const [out, left, weights] of taps(width, newWidth)) {
    for (let y = 0; y < newHeight; y++) {
      let t = 0;
      weights.forEach((w, i) => {
        t = f32(t + f32(columns[y * width + left + i] * w));
      });
      result[y * newWidth + out] = Math.round(Math.min(Math.max(t, 0), 255));
    }
  }
  return result;
}

/** For each output position along an axis: [position, first input, normalised weights]. */
function* taps(size, newSize) {
  const ratio = f32(size / newSize);
  const sratio = ratio < 1 ? 1 : ratio;
  const support = sratio; // the triangle's support, 1, widened by the scale
  for (let out = 0; out < newSize; out++) {
    const centre = f32(f32(out + 0.5) * ratio);
    const left = Math.min(Math.max(Math.floor(f32(centre - support)), 0), size - 1);
    const right = Math.min(Math.max(Math.ceil(f32(centre + support)), left + 1), size);
    const origin = f32(centre - 0.5);
    const weights = [];
    let sum = 0;
    for (let i = left; i < right; i++) {
      const x = Math.abs(f32(f32(i - origin) / sratio));
      const w = x < 1 ? f32(1 - x) : 0;
      weights.push(w);
      sum = f32(sum + w);
    }
    yield [out, left, weights.map((w) => f32(w / sum))];
  }
}
