//! The linear layers' products on flex, with the `gemm` crate flex itself multiplies with, into
//! buffers made for them.
//!
//! flex's `linear` is its matrix product and then a pass adding the bias. The product's output
//! is allocated zeroed as bytes and then copied once more into a buffer of flex's alignment:
//! two passes over every product's output before the product writes it, and a third for the
//! bias. Here the output is a `Vec<f32>` (flex takes it as it is) whose rows start as the bias,
//! and the product adds onto them. The backward products write into fresh buffers the same way,
//! and the bias gradient is one sweep summing the gradient's rows.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::tensor::{DType, TensorData};

use super::simd;

/// The fewest multiply-adds (`rows · inner · columns`) for which a product is split across the
/// thread pool, flex's own threshold: below it the hand-off costs more than it saves.
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `x · weight + bias`: [`product`] where it reads both as matrices (and the bias as one row),
/// flex's own `linear` otherwise (more than 2 dimensions, another float type).
pub(crate) fn linear(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
    let bias_values = match &bias {
        Some(bias) => bias.as_slice::<f32>().map(Some),
        None => Some(None),
    };
    match (Matrix::of(&x), Matrix::of(&weight), bias_values) {
        (Some(x), Some(weight), Some(bias)) => product(x, weight, bias),
        _ => Flex::linear(x, weight, bias),
    }
}

/// The gradient of [`linear`] for `x`: `grad · weightᵀ`.
pub(crate) fn x_gradient(weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
    match (Matrix::of(&grad), Matrix::of(&weight)) {
        (Some(grad), Some(weight)) => product(grad, weight.transposed(), None),
        _ => Flex::linear_x_backward(weight, grad),
    }
}

/// The gradient of [`linear`] for its weight: `xᵀ · grad`.
pub(crate) fn weight_gradient(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    match (Matrix::of(&x), Matrix::of(&grad)) {
        (Some(x), Some(grad)) => product(x.transposed(), grad, None),
        _ => Flex::linear_weight_backward(x, grad),
    }
}

/// The gradient of [`linear`] for its bias: the sum of `grad`'s rows.
pub(crate) fn bias_gradient(grad: FlexTensor) -> FlexTensor {
    match Matrix::of(&grad) {
        Some(matrix) => {
            let sums = column_sums(matrix);
            let columns = sums.len();
            FlexTensor::from_data(TensorData::new(sums, [columns]))
        }
        None => Flex::linear_bias_backward(grad),
    }
}

/// An `f32` matrix within a flex tensor's buffer: where it starts, its sizes and its strides.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    values: &'a [f32],
    start: usize,
    rows: usize,
    columns: usize,
    row_stride: isize,
    column_stride: isize,
}

impl<'a> Matrix<'a> {
    /// `tensor` as a matrix, when it is a non-empty 2-D `f32` tensor with non-negative strides.
    fn of(tensor: &'a FlexTensor) -> Option<Self> {
        let layout = tensor.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        let usable = tensor.dtype() == DType::F32
            && shape.num_dims() == 2
            && shape.num_elements() > 0
            && strides.iter().all(|&stride| stride >= 0);
        usable.then(|| Self {
            values: tensor.storage::<f32>(),
            start: layout.start_offset(),
            rows: shape[0],
            columns: shape[1],
            row_stride: strides[0],
            column_stride: strides[1],
        })
    }

    /// The same values read as the transposed matrix.
    fn transposed(self) -> Self {
        Self {
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
            ..self
        }
    }

    /// The value at row `row`, column `column`.
    fn at(&self, row: usize, column: usize) -> f32 {
        let offset = row as isize * self.row_stride + column as isize * self.column_stride;
        self.values[self.start + offset as usize]
    }

    /// Whether every value the strides reach lies within the buffer.
    fn in_bounds(&self) -> bool {
        let last = (self.rows - 1) * self.row_stride as usize
            + (self.columns - 1) * self.column_stride as usize;
        self.start + last < self.values.len()
    }
}

/// `lhs · rhs`, `[lhs.rows, rhs.columns]`, each row plus `bias` when one is given.
///
/// # Panics
///
/// When the inner sizes differ, or `bias` is not one value per column.
fn product(lhs: Matrix, rhs: Matrix, bias: Option<&[f32]>) -> FlexTensor {
    let (rows, inner, columns) = (lhs.rows, lhs.columns, rhs.columns);
    assert_eq!(inner, rhs.rows, "the product's inner sizes");
    assert!(
        lhs.in_bounds() && rhs.in_bounds(),
        "matrices within their buffers"
    );
    let len = rows * columns;
    let mut output = Vec::with_capacity(len);
    let parallelism = if rows * inner * columns >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `output` has room for `rows · columns` values in rows of `columns`; both inputs
    // lie within their buffers (checked above) with the sizes passed; gemm only writes
    // (`read_dst` is false), and it writes every value, as `inner` is not 0 (`Matrix::of`
    // takes no empty matrix).
    unsafe {
        gemm::gemm(
            rows,
            columns,
            inner,
            output.as_mut_ptr(),
            1,
            columns as isize,
            false,
            lhs.values.as_ptr().add(lhs.start),
            lhs.column_stride,
            lhs.row_stride,
            rhs.values.as_ptr().add(rhs.start),
            rhs.column_stride,
            rhs.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        output.set_len(len);
    }
    // After the product rather than gemm's starting values: a bias written into each row
    // first took a `memcpy` call per row, a few per cent of the product. The sum is the same,
    // `product + bias`, rounded once.
    if let Some(bias) = bias {
        assert_eq!(bias.len(), columns, "one bias per column");
        add_to_rows(&mut output, bias);
    }
    FlexTensor::from_data(TensorData::new(output, [rows, columns]))
}

/// The sum of `matrix`'s rows, one value per column: a linear layer's bias gradient.
fn column_sums(matrix: Matrix) -> Vec<f32> {
    let mut sums = vec![0.0f32; matrix.columns];
    let contiguous_rows = matrix.column_stride == 1 && matrix.row_stride == matrix.columns as isize;
    if contiguous_rows {
        let len = matrix.rows * matrix.columns;
        let values = &matrix.values[matrix.start..matrix.start + len];
        add_rows(&mut sums, values);
    } else {
        for row in 0..matrix.rows {
            for (column, sum) in sums.iter_mut().enumerate() {
                *sum += matrix.at(row, column);
            }
        }
    }
    sums
}

simd::vectorized! {
    /// Adds `row` onto each row of `rows` (rows of `row.len()` values).
    fn add_to_rows(rows: &mut [f32], row: &[f32]) => add_to_rows_body
}

#[inline(always)]
fn add_to_rows_body(rows: &mut [f32], row: &[f32]) {
    for values in rows.chunks_exact_mut(row.len()) {
        for (value, add) in values.iter_mut().zip(row) {
            *value += add;
        }
    }
}

simd::vectorized! {
    /// Adds each row of `rows` (rows of `sums.len()` values) onto `sums`.
    fn add_rows(sums: &mut [f32], rows: &[f32]) => add_rows_body
}

#[inline(always)]
fn add_rows_body(sums: &mut [f32], rows: &[f32]) {
    for row in rows.chunks_exact(sums.len()) {
        for (sum, value) in sums.iter_mut().zip(row) {
            *sum += value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(values: Vec<f32>, shape: [usize; 2]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    fn values(tensor: FlexTensor) -> Vec<f32> {
        tensor.into_data().to_vec::<f32>().unwrap()
    }

    /// Products of plain, transposed and bias-started matrices, against sums written out.
    #[test]
    fn products_match_their_definition() {
        let (rows, inner, columns) = (37, 11, 13);
        let lhs_values: Vec<f32> = (0..rows * inner).map(|i| (i % 7) as f32 - 3.0).collect();
        let rhs_values: Vec<f32> = (0..inner * columns).map(|i| (i % 5) as f32 * 0.5).collect();
        let bias: Vec<f32> = (0..columns).map(|i| i as f32).collect();
        let (lhs, rhs) = (
            tensor(lhs_values.clone(), [rows, inner]),
            tensor(rhs_values.clone(), [inner, columns]),
        );
        let (lhs, rhs) = (Matrix::of(&lhs).unwrap(), Matrix::of(&rhs).unwrap());
        let expected = |row: usize, column: usize| -> f32 {
            (0..inner)
                .map(|i| lhs_values[row * inner + i] * rhs_values[i * columns + column])
                .sum()
        };

        let plain = values(product(lhs, rhs, None));
        let with_bias = values(product(lhs, rhs, Some(&bias)));
        for row in 0..rows {
            for (column, bias) in bias.iter().enumerate() {
                let at = row * columns + column;
                assert_eq!(plain[at], expected(row, column), "({row}, {column})");
                assert_eq!(with_bias[at], expected(row, column) + bias);
            }
        }

        // (lhs · rhs)ᵀ = rhsᵀ · lhsᵀ, read through the transposed strides.
        let transposed = values(product(rhs.transposed(), lhs.transposed(), None));
        for row in 0..rows {
            for column in 0..columns {
                assert_eq!(transposed[column * rows + row], expected(row, column));
            }
        }
    }

    #[test]
    fn column_sums_add_up_every_row_however_it_is_laid_out() {
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let matrix = tensor(values, [3, 4]);
        let matrix = Matrix::of(&matrix).unwrap();
        assert_eq!(column_sums(matrix), vec![12.0, 15.0, 18.0, 21.0]);
        assert_eq!(column_sums(matrix.transposed()), vec![6.0, 22.0, 38.0]);
    }

    #[test]
    fn only_non_empty_f32_matrices_are_read() {
        let empty = tensor(Vec::new(), [0, 4]);
        assert!(Matrix::of(&empty).is_none());
        let three_dims = FlexTensor::from_data(TensorData::new(vec![0.0f32; 8], [2, 2, 2]));
        assert!(Matrix::of(&three_dims).is_none());
        let integers = FlexTensor::from_data(TensorData::new(vec![0i32; 4], [2, 2]));
        assert!(Matrix::of(&integers).is_none());
    }
}
