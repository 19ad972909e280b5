//! Value types at compile time ([`Ty`]) and values at run time ([`Value`], [`Array`]).
//!
//! Arrays are strided 2-D views over a buffer that is either borrowed from the frame or owned by
//! the graph evaluation: a waveform is a view of height 1. A region of interest of a borrowed
//! image is then just another view, and a chain such as `select → roi → mean` never copies pixels.

use std::borrow::Cow;
use std::fmt;

/// The type of a node's value as known at compile time. Shapes are optional: they are known when
/// `select` declares them and propagate through the ops that preserve or compute them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    Scalar,
    Waveform {
        len: Option<usize>,
    },
    Image {
        width: Option<usize>,
        height: Option<usize>,
    },
    /// The output of an accumulating op (histogram, binned_mean, strip_chart): it exists only as
    /// a result, never as the input of another node.
    Accumulated,
}

impl Ty {
    pub(crate) fn is_array(self) -> bool {
        matches!(self, Ty::Waveform { .. } | Ty::Image { .. })
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn dim(d: Option<usize>) -> String {
            d.map_or_else(|| "?".to_string(), |d| d.to_string())
        }
        match *self {
            Ty::Scalar => write!(f, "a scalar"),
            Ty::Waveform { len: None } => write!(f, "a waveform"),
            Ty::Waveform { len: Some(len) } => write!(f, "a waveform of length {len}"),
            Ty::Image { width: None, height: None } => write!(f, "an image"),
            Ty::Image { width, height } => write!(f, "an image of {}x{} (width x height)", dim(width), dim(height)),
            Ty::Accumulated => write!(f, "an accumulated result"),
        }
    }
}

/// A 2-D view (`width` x `height`, row-major, rows `stride` apart starting at `offset`) over a
/// borrowed or owned buffer. Invariant (checked by every constructor): each row lies inside the
/// buffer, so row slicing never panics.
#[derive(Clone, Debug)]
pub(crate) struct Array<'a> {
    data: Cow<'a, [f64]>,
    offset: usize,
    width: usize,
    height: usize,
    stride: usize,
}

/// How many rows ahead `Array::rows` prefetches a strided view. Summing 256×256 regions of
/// 512×512 frames in memory on 2 threads (AMD EPYC): 48 µs a region without prefetching, 32 µs
/// with 4 rows; in the image pipeline, where the sources stream frames out at the same time,
/// 8 rows beat 4 and 16 beat 8 (a few % each, three runs out of three).
pub const ROWS_AHEAD: usize = 16;

impl<'a> Array<'a> {
    /// A view of a whole buffer; `None` unless `data.len() == width * height`.
    pub(crate) fn new(data: Cow<'a, [f64]>, width: usize, height: usize) -> Option<Self> {
        (width.checked_mul(height) == Some(data.len())).then_some(Array {
            data,
            offset: 0,
            width,
            height,
            stride: width,
        })
    }

    /// An owned contiguous array (`data.len()` must be `width * height`, as built by the ops).
    pub(crate) fn owned(data: Vec<f64>, width: usize, height: usize) -> Self {
        debug_assert_eq!(data.len(), width * height);
        Array {
            data: Cow::Owned(data),
            offset: 0,
            width,
            height,
            stride: width,
        }
    }

    pub(crate) fn width(&self) -> usize {
        self.width
    }

    pub(crate) fn height(&self) -> usize {
        self.height
    }

    pub(crate) fn len(&self) -> usize {
        self.width * self.height
    }

    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Row `y` (`y < height`).
    pub(crate) fn row(&self, y: usize) -> &[f64] {
        let start = self.offset + y * self.stride;
        &self.data[start..start + self.width]
    }

    pub(crate) fn rows(&self) -> impl Iterator<Item = &[f64]> + '_ {
        // The rows of a view (a region of interest) lie a stride apart, each on pages of its own,
        // where the hardware prefetcher starts over: ask for the row a few ahead of each one read.
        let strided = self.stride != self.width;
        (0..self.height).map(move |y| {
            if strided {
                legion_bridge::streaming::prefetch_ahead(y, self.height, ROWS_AHEAD, |r| self.row(r));
            }
            self.row(y)
        })
    }

    /// The elements in row-major order, as one slice when the view is contiguous.
    pub(crate) fn contiguous(&self) -> Option<&[f64]> {
        (self.stride == self.width || self.height <= 1).then(|| &self.data[self.offset..self.offset + self.len()])
    }

    /// Calls `f` on every element in row-major order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(f64)) {
        match self.contiguous() {
            Some(all) => all.iter().for_each(|&x| f(x)),
            None => self.rows().for_each(|row| row.iter().for_each(|&x| f(x))),
        }
    }

    /// The elements in row-major order, copied.
    pub(crate) fn to_vec(&self) -> Vec<f64> {
        match self.contiguous() {
            Some(all) => all.to_vec(),
            None => {
                let mut out = Vec::with_capacity(self.len());
                self.rows().for_each(|row| out.extend_from_slice(row));
                out
            }
        }
    }

    /// Whether this array owns a buffer holding exactly its elements.
    pub(crate) fn is_owned_exact(&self) -> bool {
        matches!(self.data, Cow::Owned(_)) && self.offset == 0 && self.stride == self.width && self.data.len() == self.len()
    }

    /// The owned buffer when this array owns exactly its elements (so it can be updated in place).
    pub(crate) fn owned_mut(&mut self) -> Option<&mut [f64]> {
        let exact = self.is_owned_exact();
        match &mut self.data {
            Cow::Owned(v) if exact => Some(v.as_mut_slice()),
            _ => None,
        }
    }

    /// Whether `x0..x1` x `y0..y1` is a non-empty window inside this view.
    pub(crate) fn window_fits(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> bool {
        x0 < x1 && y0 < y1 && x1 <= self.width && y1 <= self.height
    }

    /// The window `x0..x1` x `y0..y1` (which must fit), without copying.
    pub(crate) fn into_window(self, x0: usize, y0: usize, x1: usize, y1: usize) -> Array<'a> {
        debug_assert!(self.window_fits(x0, y0, x1, y1));
        Array {
            offset: self.offset + y0 * self.stride + x0,
            width: x1 - x0,
            height: y1 - y0,
            stride: self.stride,
            data: self.data,
        }
    }

    /// The window `x0..x1` x `y0..y1` (which must fit) of a view that stays in place: free for a
    /// borrowed buffer, a copy of the window for an owned one.
    pub(crate) fn window(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> Array<'a> {
        debug_assert!(self.window_fits(x0, y0, x1, y1));
        match &self.data {
            Cow::Borrowed(data) => Array {
                data: Cow::Borrowed(*data),
                offset: self.offset + y0 * self.stride + x0,
                width: x1 - x0,
                height: y1 - y0,
                stride: self.stride,
            },
            Cow::Owned(_) => {
                let mut out = Vec::with_capacity((x1 - x0) * (y1 - y0));
                (y0..y1).for_each(|y| out.extend_from_slice(&self.row(y)[x0..x1]));
                Array::owned(out, x1 - x0, y1 - y0)
            }
        }
    }
}

/// A node's value for one event.
#[derive(Clone, Debug)]
pub(crate) enum Value<'a> {
    Scalar(f64),
    Array(Array<'a>),
}

impl Value<'_> {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "a scalar",
            Value::Array(_) => "an array",
        }
    }
}

/// Formats a shape for messages: `256` for a waveform, `128x64` (width x height) for an image.
pub(crate) fn shape_text(image: bool, (width, height): (usize, usize)) -> String {
    if image {
        format!("{width}x{height}")
    } else {
        width.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_borrowed_and_owned_views_agree() {
        let pixels: Vec<f64> = (0..20).map(f64::from).collect();
        let image = Array::new(Cow::Borrowed(&pixels), 5, 4).unwrap();
        let view = image.window(1, 1, 4, 3);
        assert!(matches!(view.data, Cow::Borrowed(_)));
        assert_eq!(view.to_vec(), vec![6.0, 7.0, 8.0, 11.0, 12.0, 13.0]);
        let inner = view.window(1, 1, 3, 2);
        assert_eq!(inner.to_vec(), vec![12.0, 13.0]);

        let owned = Array::owned(pixels.clone(), 5, 4);
        let copy = owned.window(1, 1, 4, 3);
        assert!(copy.contiguous().is_some());
        assert_eq!(copy.to_vec(), view.to_vec());
        let moved = owned.into_window(1, 1, 4, 3);
        assert!(moved.contiguous().is_none());
        assert_eq!(moved.to_vec(), view.to_vec());
        assert!(Array::new(Cow::Borrowed(&pixels), 3, 3).is_none());
    }
}
