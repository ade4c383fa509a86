//! A session's attributes, packed into one allocation.
//!
//! Sessions carry a handful of small attributes; one heap block per name and
//! value (plus a vector of pairs) would cost several times the data. As
//! Redis's listpack, the pairs are stored back to back in one buffer, each
//! string prefixed by its length, in insertion order. Lookups scan it (a few
//! dozen bytes for a typical session); writes rebuild it.

/// Length prefix of each string.
const PREFIX: usize = 4;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attributes {
    packed: Box<[u8]>,
}

impl Attributes {
    /// Packs `pairs`; a later pair with the same name replaces an earlier one.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut attrs = Attributes::default();
        attrs.edit(pairs, std::iter::empty());
        attrs
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.packed }
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Bytes on the heap.
    pub fn heap_size(&self) -> usize {
        self.packed.len()
    }

    /// Applies sets then removals in one rebuild; returns how many of the
    /// removed names were present.
    pub fn edit<'a>(
        &mut self,
        sets: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        removals: impl IntoIterator<Item = &'a [u8]>,
    ) -> usize {
        let mut pairs: Vec<(&[u8], &[u8])> = self.iter().collect();
        for (name, value) in sets {
            match pairs.iter_mut().find(|(n, _)| *n == name) {
                Some(pair) => pair.1 = value,
                None => pairs.push((name, value)),
            }
        }
        let before = pairs.len();
        for name in removals {
            pairs.retain(|(n, _)| *n != name);
        }
        let removed = before - pairs.len();
        let size = pairs
            .iter()
            .map(|(n, v)| 2 * PREFIX + n.len() + v.len())
            .sum();
        let mut packed = Vec::with_capacity(size);
        for (name, value) in pairs {
            for part in [name, value] {
                // Names and values are bounded far below 4 GiB by the limits.
                packed.extend_from_slice(&(part.len() as u32).to_le_bytes());
                packed.extend_from_slice(part);
            }
        }
        self.packed = packed.into_boxed_slice();
        removed
    }

    /// Sets one attribute.
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        self.edit([(name, value)], std::iter::empty());
    }

    /// Removes names; returns how many were present.
    pub fn remove<'a>(&mut self, names: impl IntoIterator<Item = &'a [u8]>) -> usize {
        self.edit(std::iter::empty(), names)
    }
}

/// The pairs, in insertion order.
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iter<'a> {
    fn take(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<PREFIX>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (part, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        Some(part)
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        Some((self.take()?, self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::Attributes;

    #[test]
    fn set_get_remove_keep_order() {
        let mut attrs =
            Attributes::from_pairs([(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"a", b"3")]);
        assert_eq!(
            attrs.iter().collect::<Vec<_>>(),
            vec![(&b"a"[..], &b"3"[..]), (b"b", b"2")]
        );
        attrs.set(b"", b"");
        assert_eq!(attrs.get(b""), Some(&b""[..]));
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs.remove([&b"a"[..], b"zz"]), 1);
        assert_eq!(attrs.get(b"a"), None);
        assert_eq!(
            attrs.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            vec![&b"b"[..], b""]
        );
    }
}
