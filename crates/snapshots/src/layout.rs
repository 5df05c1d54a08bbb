//! Where each object of a partition's snapshots lives in the store, and
//! the names that order them.

use object_store::path::Path;

/// The paths of one partition's objects under the store's root.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    base: Path,
}

impl Layout {
    pub(crate) fn new(root: &Path, topic: &str, partition: u32) -> Layout {
        Layout { base: root.clone().join(topic).join(format!("{partition:05}")) }
    }

    pub(crate) fn chunks(&self) -> Path {
        self.base.clone().join("chunks")
    }

    pub(crate) fn chunk(&self, name: &str) -> Path {
        self.chunks().join(name)
    }

    pub(crate) fn manifests(&self) -> Path {
        self.base.clone().join("snapshots")
    }

    pub(crate) fn manifest(&self, next_offset: i64) -> Path {
        self.manifests().join(offset_name(next_offset))
    }

    pub(crate) fn pointers(&self) -> Path {
        self.base.clone().join("latest")
    }

    pub(crate) fn pointer(&self, seq: u64) -> Path {
        self.pointers().join(format!("{seq:020}"))
    }
}

/// A manifest's name: its next offset, zero-padded so names sort as offsets.
pub(crate) fn offset_name(next_offset: i64) -> String {
    format!("{:020}", next_offset.max(0))
}

/// The number a zero-padded name stands for, if it is one.
pub(crate) fn number_of(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit())).then(|| name.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_numbers_and_only_numbers_parse() {
        let l = Layout::new(&Path::from("root"), "events", 3);
        assert_eq!(l.manifest(42).as_ref(), "root/events/00003/snapshots/00000000000000000042");
        assert_eq!(number_of(&l.manifest(42)), Some(42));
        assert_eq!(number_of(&l.pointer(7)), Some(7));
        assert!(offset_name(9) < offset_name(10));
        assert_eq!(number_of(&Path::from("root/x/00000000000000000042.tmp")), None);
        assert_eq!(number_of(&Path::from("root/x/abc")), None);
    }
}
