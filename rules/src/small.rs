//! A vector that keeps its first few elements inline.
//!
//! A slot's readers and an instance's read slots are one or two entries almost always; keeping them in the
//! owning struct saves a pointer chase (a cache miss) on every update.

/// Up to `N` elements inline, more on the heap.
#[derive(Debug, Clone)]
pub(crate) enum SmallVec<T: Copy + Default, const N: usize> {
    Inline { len: usize, items: [T; N] },
    Heap(Vec<T>),
}

impl<T: Copy + Default, const N: usize> Default for SmallVec<T, N> {
    fn default() -> Self {
        SmallVec::Inline { len: 0, items: [T::default(); N] }
    }
}

impl<T: Copy + Default, const N: usize> SmallVec<T, N> {
    pub(crate) fn as_slice(&self) -> &[T] {
        match self {
            SmallVec::Inline { len, items } => items.get(..*len).unwrap_or(&[]),
            SmallVec::Heap(v) => v,
        }
    }

    pub(crate) fn push(&mut self, item: T) {
        match self {
            SmallVec::Inline { len, items } if *len < N => {
                if let Some(cell) = items.get_mut(*len) {
                    *cell = item;
                }
                *len += 1;
            }
            SmallVec::Inline { .. } => {
                let mut v = self.as_slice().to_vec();
                v.push(item);
                *self = SmallVec::Heap(v);
            }
            SmallVec::Heap(v) => v.push(item),
        }
    }

    pub(crate) fn retain(&mut self, keep: impl Fn(&T) -> bool) {
        let kept: Vec<T> = self.as_slice().iter().copied().filter(|x| keep(x)).collect();
        *self = SmallVec::default();
        for x in kept {
            self.push(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_to_the_heap_and_back() {
        let mut v: SmallVec<u32, 2> = SmallVec::default();
        for i in 0..5 {
            v.push(i);
        }
        assert_eq!(v.as_slice(), [0, 1, 2, 3, 4]);
        v.retain(|x| x % 2 == 0);
        assert_eq!(v.as_slice(), [0, 2, 4]);
        v.retain(|x| *x == 2);
        assert!(matches!(v, SmallVec::Inline { len: 1, .. }));
        assert_eq!(v.as_slice(), [2]);
    }
}
