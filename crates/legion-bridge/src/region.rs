//! Index spaces, field spaces, logical regions and partitions (1-D), region requirements, and
//! typed accessors over the physical regions a task was given.
//!
//! Handles ([`IndexSpace`], [`LogicalRegion`], ...) are small `Copy` values that can be passed to
//! other tasks in their arguments. The task that creates one gets it wrapped in [`Owned`], which
//! destroys it when dropped (Legion defers the destruction until sub-tasks using it are done);
//! [`Owned::keep`] hands back the bare handle for things that must outlive the creating scope.

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::{Deref, RangeInclusive};

use bytemuck::Pod;
use legion_sys as raw;
use serde::{Deserialize, Serialize};

use crate::task::TaskContext;
use crate::{Error, Result};

/// A handle created by the running task, destroyed when dropped.
pub struct Owned<'c, H: Destroy> {
    ctx: &'c TaskContext,
    handle: Option<H>,
}

impl<'c, H: Destroy> Owned<'c, H> {
    fn new(ctx: &'c TaskContext, handle: H) -> Self {
        Self { ctx, handle: Some(handle) }
    }
    /// Gives up ownership: the handle lives until the program destroys it some other way or the
    /// runtime shuts down.
    pub fn keep(mut self) -> H {
        self.handle.take().expect("present until dropped or kept")
    }
}

impl<H: Destroy> Deref for Owned<'_, H> {
    type Target = H;
    fn deref(&self) -> &H {
        self.handle.as_ref().expect("present until dropped or kept")
    }
}

impl<H: Destroy> Drop for Owned<'_, H> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.destroy(self.ctx);
        }
    }
}

/// Handles the creating task destroys when their [`Owned`] wrapper drops.
pub trait Destroy: Copy {
    #[doc(hidden)]
    fn destroy(self, ctx: &TaskContext);
}

/// A 1-D index space (a set of points `lo..=hi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IndexSpace {
    id: u32,
    tid: u32,
    type_tag: u32,
}

impl IndexSpace {
    fn from_raw(h: raw::legion_index_space_t) -> Self {
        Self {
            id: h.id,
            tid: h.tid,
            type_tag: h.type_tag,
        }
    }
    fn to_raw(self) -> raw::legion_index_space_t {
        raw::legion_index_space_t {
            id: self.id,
            tid: self.tid,
            type_tag: self.type_tag,
        }
    }
}

impl Destroy for IndexSpace {
    fn destroy(self, ctx: &TaskContext) {
        // SAFETY: destroys a handle created in this task's context (deferred by Legion).
        unsafe { raw::legion_index_space_destroy(ctx.runtime, ctx.context, self.to_raw()) }
    }
}

/// A set of fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldSpace {
    id: u32,
}

impl Destroy for FieldSpace {
    fn destroy(self, ctx: &TaskContext) {
        // SAFETY: destroys a handle created in this task's context (deferred by Legion).
        unsafe { raw::legion_field_space_destroy(ctx.runtime, ctx.context, raw::legion_field_space_t { id: self.id }) }
    }
}

/// A field holding values of type `T` (plain old data, copied bit for bit).
#[derive(Serialize, Deserialize)]
pub struct Field<T> {
    id: u32,
    #[serde(skip)]
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Field<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Field<T> {}
impl<T> std::fmt::Debug for Field<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Field({}: {})", self.id, std::any::type_name::<T>())
    }
}

impl<T> Field<T> {
    /// Legion's id of the field.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// A logical region: an index space times a field space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogicalRegion {
    tree_id: u32,
    index_space: IndexSpace,
    field_space: FieldSpace,
}

impl LogicalRegion {
    pub(crate) fn from_raw(h: raw::legion_logical_region_t) -> Self {
        Self {
            tree_id: h.tree_id,
            index_space: IndexSpace::from_raw(h.index_space),
            field_space: FieldSpace { id: h.field_space.id },
        }
    }
    pub(crate) fn to_raw(self) -> raw::legion_logical_region_t {
        raw::legion_logical_region_t {
            tree_id: self.tree_id,
            index_space: self.index_space.to_raw(),
            field_space: raw::legion_field_space_t { id: self.field_space.id },
        }
    }
    /// The region's index space.
    pub fn index_space(&self) -> IndexSpace {
        self.index_space
    }
    /// The region's field space.
    pub fn field_space(&self) -> FieldSpace {
        self.field_space
    }
}

impl Destroy for LogicalRegion {
    fn destroy(self, ctx: &TaskContext) {
        // SAFETY: destroys a region created in this task's context (deferred by Legion).
        unsafe { raw::legion_logical_region_destroy(ctx.runtime, ctx.context, self.to_raw()) }
    }
}

/// A partition of an index space into colored subspaces (colors `0..count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IndexPartition {
    id: u32,
    tid: u32,
    type_tag: u32,
    color_space: IndexSpace,
}

impl IndexPartition {
    fn to_raw(self) -> raw::legion_index_partition_t {
        raw::legion_index_partition_t {
            id: self.id,
            tid: self.tid,
            type_tag: self.type_tag,
        }
    }
    /// The colors of the partition, as an index space `0..=count-1`.
    pub fn color_space(&self) -> IndexSpace {
        self.color_space
    }
}

impl Destroy for IndexPartition {
    fn destroy(self, ctx: &TaskContext) {
        // SAFETY: destroys a partition and its color space, both created in this task's context.
        unsafe {
            raw::legion_index_partition_destroy(ctx.runtime, ctx.context, self.to_raw());
            raw::legion_index_space_destroy(ctx.runtime, ctx.context, self.color_space.to_raw());
        }
    }
}

/// A partition of a logical region, following an [`IndexPartition`] of its index space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogicalPartition {
    tree_id: u32,
    partition: IndexPartition,
    field_space: FieldSpace,
}

impl LogicalPartition {
    fn to_raw(self) -> raw::legion_logical_partition_t {
        raw::legion_logical_partition_t {
            tree_id: self.tree_id,
            index_partition: self.partition.to_raw(),
            field_space: raw::legion_field_space_t { id: self.field_space.id },
        }
    }
    /// The index partition this logical partition follows.
    pub fn index_partition(&self) -> IndexPartition {
        self.partition
    }
}

fn rect(bounds: &RangeInclusive<i64>) -> raw::legion_rect_1d_t {
    raw::legion_rect_1d_t {
        lo: raw::legion_point_1d_t { x: [*bounds.start()] },
        hi: raw::legion_point_1d_t { x: [*bounds.end()] },
    }
}

fn domain_point(p: i64) -> raw::legion_domain_point_t {
    // SAFETY: a pure conversion of a value.
    unsafe { raw::legion_domain_point_from_point_1d(raw::legion_point_1d_t { x: [p] }) }
}

pub(crate) fn domain(bounds: &RangeInclusive<i64>) -> raw::legion_domain_t {
    // SAFETY: a pure conversion of a value.
    unsafe { raw::legion_domain_from_rect_1d(rect(bounds)) }
}

/// What a task may do with a region's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Privilege {
    /// Only name the region (e.g. to pass it on), never touch its data.
    NoAccess,
    ReadOnly,
    ReadWrite,
    /// Write every point; the old contents are not even fetched.
    WriteDiscard,
}

impl Privilege {
    fn to_raw(self) -> raw::legion_privilege_mode_t {
        match self {
            Self::NoAccess => raw::LEGION_NO_ACCESS,
            Self::ReadOnly => raw::LEGION_READ_ONLY,
            Self::ReadWrite => raw::LEGION_READ_WRITE,
            Self::WriteDiscard => raw::LEGION_WRITE_DISCARD,
        }
    }
    fn from_raw(p: raw::legion_privilege_mode_t) -> Self {
        match p {
            raw::LEGION_READ_ONLY => Self::ReadOnly,
            raw::LEGION_READ_WRITE => Self::ReadWrite,
            raw::LEGION_WRITE_DISCARD => Self::WriteDiscard,
            _ => Self::NoAccess,
        }
    }
    fn can_read(self) -> bool {
        matches!(self, Self::ReadOnly | Self::ReadWrite | Self::WriteDiscard)
    }
    fn can_write(self) -> bool {
        matches!(self, Self::ReadWrite | Self::WriteDiscard)
    }
}

/// How concurrent tasks using the same region are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Coherence {
    /// Program order (the default).
    #[default]
    Exclusive,
    /// Any order, one at a time.
    Atomic,
    /// At the same time, on the same instance.
    Simultaneous,
    /// At the same time, no guarantees.
    Relaxed,
}

impl Coherence {
    fn to_raw(self) -> raw::legion_coherence_property_t {
        match self {
            Self::Exclusive => raw::LEGION_EXCLUSIVE,
            Self::Atomic => raw::LEGION_ATOMIC,
            Self::Simultaneous => raw::LEGION_SIMULTANEOUS,
            Self::Relaxed => raw::LEGION_RELAXED,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Region(LogicalRegion),
    /// Each point of an index launch gets the subregion of its own color.
    Partition(LogicalPartition),
}

/// One region a launched task will use: which region (or partition, for index launches), which
/// fields, with what privilege and coherence.
#[derive(Clone, Debug)]
pub struct RegionRequirement {
    target: Target,
    parent: LogicalRegion,
    privilege: Privilege,
    coherence: Coherence,
    fields: Vec<u32>,
    tag: u64,
}

impl RegionRequirement {
    /// The whole of `region` (its own parent: the launching task holds it, or created it).
    pub fn region(region: LogicalRegion, privilege: Privilege) -> Self {
        Self::subregion(region, region, privilege)
    }
    /// `region`, a subregion of `parent` (the region the launching task holds privileges on).
    pub fn subregion(region: LogicalRegion, parent: LogicalRegion, privilege: Privilege) -> Self {
        Self {
            target: Target::Region(region),
            parent,
            privilege,
            coherence: Coherence::default(),
            fields: Vec::new(),
            tag: 0,
        }
    }
    /// For an index launch: point `p` gets the subregion of color `p` of `partition`.
    pub fn partition(partition: LogicalPartition, parent: LogicalRegion, privilege: Privilege) -> Self {
        Self {
            target: Target::Partition(partition),
            parent,
            privilege,
            coherence: Coherence::default(),
            fields: Vec::new(),
            tag: 0,
        }
    }
    /// Adds a field the task will access.
    pub fn field<T>(mut self, field: Field<T>) -> Self {
        self.fields.push(field.id);
        self
    }
    /// Sets the coherence.
    pub fn coherence(mut self, coherence: Coherence) -> Self {
        self.coherence = coherence;
        self
    }
    /// Sets the mapping tag of this requirement.
    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Adds this requirement to a single-task launcher.
    pub(crate) fn add_to_task(&self, launcher: raw::legion_task_launcher_t) -> Result<()> {
        let Target::Region(region) = self.target else {
            return Err(Error::InvalidArgument("a partition requirement needs an index launch".into()));
        };
        // SAFETY: `launcher` is live (owned by the caller); handles are plain values.
        unsafe {
            let index = raw::legion_task_launcher_add_region_requirement_logical_region(
                launcher,
                region.to_raw(),
                self.privilege.to_raw(),
                self.coherence.to_raw(),
                self.parent.to_raw(),
                self.tag,
                false,
            );
            for &field in &self.fields {
                raw::legion_task_launcher_add_field(launcher, index, field, true);
            }
        }
        Ok(())
    }

    /// Adds this requirement to an index launcher (projection 0: the identity).
    pub(crate) fn add_to_index(&self, launcher: raw::legion_index_launcher_t) {
        // SAFETY: `launcher` is live (owned by the caller); handles are plain values.
        unsafe {
            let index = match self.target {
                Target::Region(region) => raw::legion_index_launcher_add_region_requirement_logical_region(
                    launcher,
                    region.to_raw(),
                    0,
                    self.privilege.to_raw(),
                    self.coherence.to_raw(),
                    self.parent.to_raw(),
                    self.tag,
                    false,
                ),
                Target::Partition(partition) => raw::legion_index_launcher_add_region_requirement_logical_partition(
                    launcher,
                    partition.to_raw(),
                    0,
                    self.privilege.to_raw(),
                    self.coherence.to_raw(),
                    self.parent.to_raw(),
                    self.tag,
                    false,
                ),
            };
            for &field in &self.fields {
                raw::legion_index_launcher_add_field(launcher, index, field, true);
            }
        }
    }
}

/// Region-creation operations of a running task.
impl TaskContext {
    /// Creates the 1-D index space `bounds` (empty when `start > end`).
    pub fn create_index_space(&self, bounds: RangeInclusive<i64>) -> Owned<'_, IndexSpace> {
        // SAFETY: runtime and context belong to the running task.
        let handle = unsafe { raw::legion_index_space_create_domain(self.runtime, self.context, domain(&bounds)) };
        Owned::new(self, IndexSpace::from_raw(handle))
    }

    /// The bounds of a 1-D index space.
    pub fn index_space_bounds(&self, space: IndexSpace) -> Result<RangeInclusive<i64>> {
        // SAFETY: reads the domain of a live index space.
        let domain = unsafe { raw::legion_index_space_get_domain(self.runtime, space.to_raw()) };
        if domain.dim != 1 {
            return Err(Error::InvalidArgument(format!(
                "index space has {} dimensions, the bridge handles 1",
                domain.dim
            )));
        }
        Ok(domain.rect_data[0]..=domain.rect_data[1])
    }

    /// Creates an empty field space.
    pub fn create_field_space(&self) -> Owned<'_, FieldSpace> {
        // SAFETY: runtime and context belong to the running task.
        let handle = unsafe { raw::legion_field_space_create(self.runtime, self.context) };
        Owned::new(self, FieldSpace { id: handle.id })
    }

    /// Adds a field of `T` to `space`, with the id `id` or one Legion picks.
    pub fn allocate_field<T: Pod>(&self, space: FieldSpace, id: Option<u32>) -> Result<Field<T>> {
        let wanted = id.unwrap_or(raw::LEGION_AUTO_GENERATE_ID);
        // SAFETY: the allocator is created, used and destroyed here, on a live field space.
        let got = unsafe {
            let allocator = raw::legion_field_allocator_create(self.runtime, self.context, raw::legion_field_space_t { id: space.id });
            let got = raw::legion_field_allocator_allocate_field(allocator, std::mem::size_of::<T>(), wanted);
            raw::legion_field_allocator_destroy(allocator);
            got
        };
        if id.is_some_and(|id| id != got) {
            return Err(Error::InvalidArgument(format!("field id {wanted} is not available (got {got})")));
        }
        Ok(Field {
            id: got,
            _type: PhantomData,
        })
    }

    /// Creates a logical region over `space` with the fields of `fields`.
    pub fn create_region(&self, space: IndexSpace, fields: FieldSpace) -> Owned<'_, LogicalRegion> {
        // SAFETY: runtime and context belong to the running task; handles are plain values.
        let handle = unsafe {
            raw::legion_logical_region_create(
                self.runtime,
                self.context,
                space.to_raw(),
                raw::legion_field_space_t { id: fields.id },
                false,
            )
        };
        Owned::new(self, LogicalRegion::from_raw(handle))
    }

    /// Destroys a region made with [`create_region`](Self::create_region) and [`kept`](Owned::keep),
    /// with its index space (and that space's partitions) and its field space: Legion frees them,
    /// and the instances in memory, once the operations using them are done. The handles must not
    /// be used afterwards.
    pub fn destroy_region_tree(&self, region: LogicalRegion) {
        region.destroy(self);
        region.index_space().destroy(self);
        region.field_space().destroy(self);
    }

    /// Destroys a partition made with [`partition_equal`](Self::partition_equal) or
    /// [`partition_by_ranges`](Self::partition_by_ranges) and kept, with its color space (which
    /// destroying the partitioned index space alone would leave).
    pub fn destroy_partition(&self, partition: IndexPartition) {
        partition.destroy(self);
    }

    /// Splits `space` into `parts` subspaces of (nearly) equal size, colors `0..parts`.
    pub fn partition_equal(&self, space: IndexSpace, parts: usize) -> Result<Owned<'_, IndexPartition>> {
        if parts == 0 {
            return Err(Error::InvalidArgument("a partition needs at least one part".into()));
        }
        let colors = self.create_index_space(0..=parts as i64 - 1).keep();
        // SAFETY: runtime and context belong to the running task; handles are plain values.
        let handle = unsafe {
            raw::legion_index_partition_create_equal(
                self.runtime,
                self.context,
                space.to_raw(),
                colors.to_raw(),
                1,
                raw::LEGION_AUTO_GENERATE_ID,
            )
        };
        Ok(Owned::new(
            self,
            IndexPartition {
                id: handle.id,
                tid: handle.tid,
                type_tag: handle.type_tag,
                color_space: colors,
            },
        ))
    }

    /// Splits `space` by explicit ranges: color `i` is `ranges[i]`. Ranges must lie inside the
    /// space; disjoint ranges give a disjoint partition (what write access by an index launch
    /// needs), overlapping ones an aliased partition.
    pub fn partition_by_ranges(&self, space: IndexSpace, ranges: &[RangeInclusive<i64>]) -> Result<Owned<'_, IndexPartition>> {
        if ranges.is_empty() {
            return Err(Error::InvalidArgument("a partition needs at least one range".into()));
        }
        let bounds = self.index_space_bounds(space)?;
        for range in ranges {
            if !range.is_empty() && (range.start() < bounds.start() || range.end() > bounds.end()) {
                return Err(Error::InvalidArgument(format!(
                    "range {range:?} is not inside the index space {bounds:?}"
                )));
            }
        }
        let mut sorted: Vec<_> = ranges.iter().filter(|r| !r.is_empty()).collect();
        sorted.sort_by_key(|r| *r.start());
        let disjoint = sorted.windows(2).all(|w| w[0].end() < w[1].start());
        let kind = if disjoint {
            raw::LEGION_DISJOINT_KIND
        } else {
            raw::LEGION_ALIASED_KIND
        };

        let colors = self.create_index_space(0..=ranges.len() as i64 - 1).keep();
        let mut points: Vec<_> = (0..ranges.len() as i64).map(domain_point).collect();
        let mut domains: Vec<_> = ranges.iter().map(domain).collect();
        // SAFETY: `points` and `domains` hold `ranges.len()` entries each and outlive the call.
        let handle = unsafe {
            raw::legion_index_partition_create_by_domain(
                self.runtime,
                self.context,
                space.to_raw(),
                points.as_mut_ptr(),
                domains.as_mut_ptr(),
                ranges.len(),
                colors.to_raw(),
                true,
                kind,
                raw::LEGION_AUTO_GENERATE_ID,
            )
        };
        Ok(Owned::new(
            self,
            IndexPartition {
                id: handle.id,
                tid: handle.tid,
                type_tag: handle.type_tag,
                color_space: colors,
            },
        ))
    }

    /// The subspace of color `color` of a partition.
    pub fn subspace(&self, partition: IndexPartition, color: i64) -> IndexSpace {
        // SAFETY: reads a subspace handle of a live partition.
        IndexSpace::from_raw(unsafe {
            raw::legion_index_partition_get_index_subspace_domain_point(self.runtime, partition.to_raw(), domain_point(color))
        })
    }

    /// `region` partitioned like `partition` partitions its index space.
    pub fn logical_partition(&self, region: LogicalRegion, partition: IndexPartition) -> LogicalPartition {
        // SAFETY: builds a logical partition handle from live handles (no new resources).
        let handle = unsafe { raw::legion_logical_partition_create(self.runtime, region.to_raw(), partition.to_raw()) };
        LogicalPartition {
            tree_id: handle.tree_id,
            partition,
            field_space: region.field_space,
        }
    }

    /// The subregion of color `color` of a logical partition.
    pub fn subregion(&self, partition: LogicalPartition, color: i64) -> LogicalRegion {
        // SAFETY: reads a subregion handle of a live partition.
        LogicalRegion::from_raw(unsafe {
            raw::legion_logical_partition_get_logical_subregion_by_color_domain_point(self.runtime, partition.to_raw(), domain_point(color))
        })
    }
}

/// Per task: which (region, field) pairs have live accessors. Readers count up, a writer is -1,
/// so a writer never coexists with another accessor on the same data.
#[derive(Default)]
pub(crate) struct BorrowTable(RefCell<HashMap<(usize, u32), isize>>);

impl BorrowTable {
    fn acquire(&self, key: (usize, u32), write: bool) -> Result<()> {
        let mut table = self.0.borrow_mut();
        let count = table.entry(key).or_insert(0);
        match (write, *count) {
            (false, n) if n >= 0 => *count += 1,
            (true, 0) => *count = -1,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "field {} of region {} already has {} accessor",
                    key.1,
                    key.0,
                    if *count < 0 { "a write" } else { "a read" }
                )))
            }
        }
        Ok(())
    }
    fn release(&self, key: (usize, u32), write: bool) {
        let mut table = self.0.borrow_mut();
        if let Some(count) = table.get_mut(&key) {
            *count = if write { 0 } else { *count - 1 };
        }
    }
}

/// A region requirement of the running task, mapped to memory.
pub struct PhysicalRegion<'t> {
    ctx: &'t TaskContext,
    index: usize,
    raw: raw::legion_physical_region_t,
    privilege: Privilege,
    bounds: RangeInclusive<i64>,
}

impl<'t> PhysicalRegion<'t> {
    pub(crate) fn new(ctx: &'t TaskContext, index: usize, raw_region: raw::legion_physical_region_t) -> Result<Self> {
        // SAFETY: the requirement and the physical region belong to the running task.
        let (privilege, region) = unsafe {
            let requirement = raw::legion_task_get_requirement(ctx.task, index as u32);
            (
                Privilege::from_raw(raw::legion_region_requirement_get_privilege(requirement)),
                raw::legion_physical_region_get_logical_region(raw_region),
            )
        };
        let bounds = ctx.index_space_bounds(IndexSpace::from_raw(region.index_space))?;
        Ok(Self {
            ctx,
            index,
            raw: raw_region,
            privilege,
            bounds,
        })
    }

    /// The privilege the task holds on this region.
    pub fn privilege(&self) -> Privilege {
        self.privilege
    }

    /// The points of this region.
    pub fn bounds(&self) -> RangeInclusive<i64> {
        self.bounds.clone()
    }

    /// The logical region this physical region is an instance of.
    pub fn logical_region(&self) -> LogicalRegion {
        // SAFETY: reads the handle of the task's own physical region.
        LogicalRegion::from_raw(unsafe { raw::legion_physical_region_get_logical_region(self.raw) })
    }

    /// Read access to `field` (which must be one of the requirement's fields, of type `T`).
    pub fn read<T: Pod>(&self, field: Field<T>) -> Result<ReadAccessor<'t, T>> {
        if !self.privilege.can_read() {
            return Err(Error::Privilege {
                index: self.index,
                granted: self.privilege,
                wanted: "reading",
            });
        }
        let view = self.view::<T>(field, false)?;
        Ok(ReadAccessor { view })
    }

    /// Write access to `field` (which must be one of the requirement's fields, of type `T`).
    pub fn write<T: Pod>(&self, field: Field<T>) -> Result<WriteAccessor<'t, T>> {
        if !self.privilege.can_write() {
            return Err(Error::Privilege {
                index: self.index,
                granted: self.privilege,
                wanted: "writing",
            });
        }
        let view = self.view::<T>(field, true)?;
        Ok(WriteAccessor { view })
    }

    fn view<T: Pod>(&self, field: Field<T>, write: bool) -> Result<View<'t, T>> {
        let key = (self.index, field.id);
        self.ctx.borrows.acquire(key, write)?;
        let mut view = View {
            ctx: self.ctx,
            key,
            write,
            base: std::ptr::null_mut(),
            lo: *self.bounds.start(),
            hi: *self.bounds.end(),
            stride: 0,
            _type: PhantomData,
        };
        if self.bounds.is_empty() {
            return Ok(view);
        }
        let whole = rect(&self.bounds);
        let mut sub = raw::legion_rect_1d_t::default();
        let mut offset = raw::legion_byte_offset_t::default();
        // SAFETY: the accessor is made and destroyed here; the pointer it yields stays valid while
        // the region is mapped, i.e. for the whole task ('t).
        let base = unsafe {
            let accessor = raw::legion_physical_region_get_field_accessor_array_1d(self.raw, field.id);
            let base = raw::legion_accessor_array_1d_raw_rect_ptr(accessor, whole, &mut sub, &mut offset);
            raw::legion_accessor_array_1d_destroy(accessor);
            base
        };
        if base.is_null() || sub.lo.x[0] != whole.lo.x[0] || sub.hi.x[0] != whole.hi.x[0] {
            return Err(Error::InvalidArgument(format!(
                "field {} of region {} is not laid out as one 1-D array",
                field.id, self.index
            )));
        }
        let stride = offset.offset as isize;
        if base as usize % std::mem::align_of::<T>() != 0
            || stride as usize % std::mem::align_of::<T>() != 0
            || (stride as usize) < std::mem::size_of::<T>()
        {
            return Err(Error::InvalidArgument(format!(
                "field {} of region {} does not hold {} values (stride {stride})",
                field.id,
                self.index,
                std::any::type_name::<T>()
            )));
        }
        view.base = base as *mut u8;
        view.stride = stride;
        Ok(view)
    }
}

/// The memory of one field of one mapped region: `base` is the address of point `lo`.
struct View<'t, T> {
    ctx: &'t TaskContext,
    key: (usize, u32),
    write: bool,
    base: *mut u8,
    lo: i64,
    hi: i64,
    stride: isize,
    _type: PhantomData<&'t mut T>,
}

impl<T: Pod> View<'_, T> {
    fn pointer(&self, point: i64) -> Result<*mut T> {
        if point < self.lo || point > self.hi {
            return Err(Error::OutOfBounds {
                point,
                lo: self.lo,
                hi: self.hi,
            });
        }
        // SAFETY: the point is inside the mapped rectangle, so the offset stays in the instance.
        Ok(unsafe { self.base.offset((point - self.lo) as isize * self.stride) } as *mut T)
    }
    fn len(&self) -> usize {
        (self.hi - self.lo + 1).max(0) as usize
    }
    fn dense(&self) -> bool {
        self.stride as usize == std::mem::size_of::<T>()
    }
}

impl<T> Drop for View<'_, T> {
    fn drop(&mut self) {
        self.ctx.borrows.release(self.key, self.write);
    }
}

/// Reads one field of a mapped region.
pub struct ReadAccessor<'t, T: Pod> {
    view: View<'t, T>,
}

impl<T: Pod> ReadAccessor<'_, T> {
    /// The value at `point`.
    pub fn get(&self, point: i64) -> Result<T> {
        // SAFETY: `pointer` checked the bounds; the instance holds initialised `T`-sized slots.
        self.view.pointer(point).map(|p| unsafe { p.read() })
    }
    /// All values in point order, when the field is stored densely (the usual layout).
    pub fn as_slice(&self) -> Option<&[T]> {
        if self.view.len() == 0 {
            return Some(&[]);
        }
        // SAFETY: dense layout over the whole mapped rectangle; no writer exists (borrow table).
        self.view
            .dense()
            .then(|| unsafe { std::slice::from_raw_parts(self.view.base as *const T, self.view.len()) })
    }
    /// The points covered.
    pub fn bounds(&self) -> RangeInclusive<i64> {
        self.view.lo..=self.view.hi
    }
}

/// Reads and writes one field of a mapped region.
pub struct WriteAccessor<'t, T: Pod> {
    view: View<'t, T>,
}

impl<T: Pod> WriteAccessor<'_, T> {
    /// The value at `point`.
    pub fn get(&self, point: i64) -> Result<T> {
        // SAFETY: `pointer` checked the bounds.
        self.view.pointer(point).map(|p| unsafe { p.read() })
    }
    /// Stores `value` at `point`.
    pub fn set(&mut self, point: i64, value: T) -> Result<()> {
        // SAFETY: `pointer` checked the bounds; this accessor is the only one on the field.
        self.view.pointer(point).map(|p| unsafe { p.write(value) })
    }
    /// All values in point order, writable, when the field is stored densely.
    pub fn as_mut_slice(&mut self) -> Option<&mut [T]> {
        if self.view.len() == 0 {
            return Some(&mut []);
        }
        // SAFETY: dense layout over the whole mapped rectangle; the borrow table guarantees this
        // accessor is the only one on the field, and `&mut self` that the slice is unique.
        self.view
            .dense()
            .then(|| unsafe { std::slice::from_raw_parts_mut(self.view.base as *mut T, self.view.len()) })
    }
    /// The points covered.
    pub fn bounds(&self) -> RangeInclusive<i64> {
        self.view.lo..=self.view.hi
    }
}
