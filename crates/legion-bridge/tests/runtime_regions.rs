//! Index spaces, fields, logical regions, partitions and accessors against the real runtime:
//! data written by one task is read by another, partitions hand out disjoint subregions.

use std::ops::RangeInclusive;
use std::process::ExitCode;

use legion_bridge::harness::{case, check, run};
use legion_bridge::{
    register_task, Error, Field, FieldSpace, IndexLauncher, IndexSpace, LogicalRegion, Owned, Privilege, RegionRequirement, TaskContext,
    TaskError, TaskId, TaskLauncher, VariantOptions,
};

/// Fields of the test region: a float and an integer per point.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy)]
struct Fields {
    value: Field<f64>,
    color: Field<i32>,
}

/// A region with the two test fields.
struct TestRegion<'c> {
    region: Owned<'c, LogicalRegion>,
    _field_space: Owned<'c, FieldSpace>,
    space: Owned<'c, IndexSpace>,
    fields: Fields,
}

impl<'c> TestRegion<'c> {
    fn new(ctx: &'c TaskContext, points: RangeInclusive<i64>) -> Result<Self, TaskError> {
        let space = ctx.create_index_space(points);
        let field_space = ctx.create_field_space();
        let fields = Fields {
            value: ctx.allocate_field(*field_space, None)?,
            color: ctx.allocate_field(*field_space, None)?,
        };
        let region = ctx.create_region(*space, *field_space);
        Ok(Self {
            region,
            _field_space: field_space,
            space,
            fields,
        })
    }
}

/// Runs `fill` over the whole of `region`'s value field and waits for it.
fn fill_values(ctx: &TaskContext, fill: TaskId<Fields, ()>, region: LogicalRegion, fields: Fields) -> Result<(), TaskError> {
    let requirement = RegionRequirement::region(region, Privilege::WriteDiscard).field(fields.value);
    Ok(ctx.execute(&TaskLauncher::new(fill, &fields)?.region(requirement))?.get()?)
}

fn main() -> ExitCode {
    // Writes value = 1.5 * p into its region (whatever part of the region it was given).
    let fill = register_task(20, "fill", VariantOptions::leaf(), |ctx, fields: Fields| {
        let region = ctx.region(0)?;
        let mut values = region.write(fields.value)?;
        for p in values.bounds() {
            values.set(p, 1.5 * p as f64)?;
        }
        Ok(())
    })
    .unwrap();
    // Reads the whole region: (sum via slice, sum via get, bounds).
    let sum = register_task(21, "sum", VariantOptions::leaf(), |ctx, fields: Fields| {
        let region = ctx.region(0)?;
        let values = region.read(fields.value)?;
        let by_slice: f64 = values.as_slice().ok_or_else(|| TaskError::msg("not dense"))?.iter().sum();
        let by_point: f64 = values.bounds().map(|p| values.get(p)).sum::<Result<f64, _>>()?;
        Ok((by_slice, by_point, *values.bounds().start(), *values.bounds().end()))
    })
    .unwrap();
    // Index task: writes its own color into its subregion, returns the bounds it was given.
    let paint = register_task(22, "paint", VariantOptions::leaf(), |ctx, fields: Fields| {
        let color = ctx.index_point().ok_or_else(|| TaskError::msg("not an index launch"))? as i32;
        let region = ctx.region(0)?;
        let mut colors = region.write(fields.color)?;
        colors.as_mut_slice().ok_or_else(|| TaskError::msg("not dense"))?.fill(color);
        Ok((*colors.bounds().start(), *colors.bounds().end()))
    })
    .unwrap();
    let read_colors = register_task(23, "read_colors", VariantOptions::leaf(), |ctx, fields: Fields| {
        let region = ctx.region(0)?;
        let colors = region.read(fields.color)?;
        Ok(colors.as_slice().ok_or_else(|| TaskError::msg("not dense"))?.to_vec())
    })
    .unwrap();
    // Tries what a read-only requirement must refuse, and other misuse; returns the errors.
    let misuse = register_task(24, "misuse", VariantOptions::leaf(), |ctx, fields: Fields| {
        let region = ctx.region(0)?;
        let write = region.write(fields.value).err().map(|e| e.to_string()).unwrap_or_default();
        let reader = region.read(fields.value)?;
        let out_of_bounds = match reader.get(*reader.bounds().end() + 1) {
            Err(Error::OutOfBounds { .. }) => "out of bounds".to_string(),
            other => format!("{other:?}"),
        };
        let second_reader_ok = region.read(fields.value).is_ok();
        let missing_region = ctx.region(5).err().map(|e| e.to_string()).unwrap_or_default();
        Ok((write, out_of_bounds, second_reader_ok, missing_region))
    })
    .unwrap();
    let double_writer = register_task(25, "double_writer", VariantOptions::leaf(), |ctx, fields: Fields| {
        let region = ctx.region(0)?;
        let _first = region.write(fields.value)?;
        let second = region.write(fields.value).err().map(|e| e.to_string()).unwrap_or_default();
        let reader_while_writing = region.read(fields.value).err().map(|e| e.to_string()).unwrap_or_default();
        Ok((second, reader_while_writing))
    })
    .unwrap();

    let cases = vec![
        case("region_written_by_one_task_is_read_by_another", move |ctx| {
            let space = ctx.create_index_space(0..=999);
            let fs = ctx.create_field_space();
            let fields = Fields {
                value: ctx.allocate_field(*fs, None)?,
                color: ctx.allocate_field(*fs, Some(77))?,
            };
            check(fields.color.id() == 77, "requested field id not honoured")?;
            let region = ctx.create_region(*space, *fs);
            fill_values(ctx, fill, *region, fields)?;
            let (by_slice, by_point, lo, hi) = ctx
                .execute(
                    &TaskLauncher::new(sum, &fields)?.region(RegionRequirement::region(*region, Privilege::ReadOnly).field(fields.value)),
                )?
                .get()?;
            let expected: f64 = (0..=999).map(|p| 1.5 * p as f64).sum();
            check((lo, hi) == (0, 999), format!("bounds {lo}..={hi}"))?;
            check(
                by_slice == expected && by_point == expected,
                format!("read {by_slice} / {by_point}, wrote {expected}"),
            )
        }),
        case("equal_partition_gives_disjoint_covering_subspaces", |ctx| {
            let space = ctx.create_index_space(0..=99);
            let partition = ctx.partition_equal(*space, 4)?;
            check(ctx.index_space_bounds(partition.color_space())? == (0..=3), "color space")?;
            let mut next = 0;
            for color in 0..4 {
                let bounds = ctx.index_space_bounds(ctx.subspace(*partition, color))?;
                check(
                    *bounds.start() == next,
                    format!("part {color} starts at {}, expected {next}", bounds.start()),
                )?;
                next = bounds.end() + 1;
            }
            check(next == 100, format!("parts end at {next}"))
        }),
        case("range_partition_gives_each_point_task_its_subregion", move |ctx| {
            let ranges: Vec<RangeInclusive<i64>> = vec![0..=9, 10..=49, 50..=50, 51..=99];
            // Bound in this order so the region is destroyed before its spaces.
            let TestRegion {
                space,
                _field_space,
                region,
                fields,
            } = TestRegion::new(ctx, 0..=99)?;
            let partition = ctx.partition_by_ranges(*space, &ranges)?;
            let lp = ctx.logical_partition(*region, *partition);
            for (color, range) in ranges.iter().enumerate() {
                let sub = ctx.subregion(lp, color as i64);
                check(ctx.index_space_bounds(sub.index_space())? == *range, format!("subregion {color}"))?;
            }
            let given = ctx
                .execute_index(
                    &IndexLauncher::new(paint, 0..=ranges.len() as i64 - 1, &fields)?
                        .region(RegionRequirement::partition(lp, *region, Privilege::WriteDiscard).field(fields.color)),
                )?
                .collect()?;
            for (color, (lo, hi)) in given.iter().enumerate() {
                check((*lo..=*hi) == ranges[color], format!("point {color} was given {lo}..={hi}"))?;
            }
            let colors = ctx
                .execute(
                    &TaskLauncher::new(read_colors, &fields)?
                        .region(RegionRequirement::region(*region, Privilege::ReadOnly).field(fields.color)),
                )?
                .get()?;
            for (p, color) in colors.iter().enumerate() {
                let owner = ranges.iter().position(|r| r.contains(&(p as i64))).expect("ranges cover the space");
                check(*color == owner as i32, format!("point {p} painted {color}, owned by {owner}"))?;
            }
            Ok(())
        }),
        case("subregion_requirement_reads_only_its_part", move |ctx| {
            // Bound in this order so the region is destroyed before its spaces.
            let TestRegion {
                space,
                _field_space,
                region,
                fields,
            } = TestRegion::new(ctx, 0..=99)?;
            fill_values(ctx, fill, *region, fields)?;
            let partition = ctx.partition_by_ranges(*space, &[0..=19, 20..=99])?;
            let second = ctx.subregion(ctx.logical_partition(*region, *partition), 1);
            let (sum_part, _, lo, hi) = ctx
                .execute(
                    &TaskLauncher::new(sum, &fields)?
                        .region(RegionRequirement::subregion(second, *region, Privilege::ReadOnly).field(fields.value)),
                )?
                .get()?;
            let expected: f64 = (20..=99).map(|p| 1.5 * p as f64).sum();
            check(
                (lo, hi) == (20, 99) && sum_part == expected,
                format!("subregion {lo}..={hi} summed {sum_part}"),
            )
        }),
        case("bad_partitions_are_refused", |ctx| {
            let space = ctx.create_index_space(0..=9);
            check(
                matches!(ctx.partition_by_ranges(*space, &[0..=4, 5..=10]), Err(Error::InvalidArgument(_))),
                "range past the end",
            )?;
            check(
                matches!(ctx.partition_by_ranges(*space, &[]), Err(Error::InvalidArgument(_))),
                "no ranges",
            )?;
            check(
                matches!(ctx.partition_equal(*space, 0), Err(Error::InvalidArgument(_))),
                "zero parts",
            )?;
            // Overlapping ranges are allowed: an aliased partition.
            check(
                ctx.partition_by_ranges(*space, &[0..=6, 4..=9]).is_ok(),
                "aliased partition refused",
            )
        }),
        case("accessors_enforce_privileges_bounds_and_exclusivity", move |ctx| {
            // Bound in this order so the region is destroyed before its spaces.
            let TestRegion {
                space: _space,
                _field_space,
                region,
                fields,
            } = TestRegion::new(ctx, 0..=9)?;
            fill_values(ctx, fill, *region, fields)?;
            let (write, out_of_bounds, second_reader_ok, missing) = ctx
                .execute(
                    &TaskLauncher::new(misuse, &fields)?
                        .region(RegionRequirement::region(*region, Privilege::ReadOnly).field(fields.value)),
                )?
                .get()?;
            check(write.contains("does not allow writing"), format!("write on read-only: {write:?}"))?;
            check(out_of_bounds == "out of bounds", out_of_bounds)?;
            check(second_reader_ok, "two readers refused")?;
            check(missing.contains("has 1 regions"), format!("missing region: {missing:?}"))?;
            let (second, reader) = ctx
                .execute(
                    &TaskLauncher::new(double_writer, &fields)?
                        .region(RegionRequirement::region(*region, Privilege::ReadWrite).field(fields.value)),
                )?
                .get()?;
            check(
                second.contains("already has a write accessor"),
                format!("second writer: {second:?}"),
            )?;
            check(
                reader.contains("already has a write accessor"),
                format!("reader while writing: {reader:?}"),
            )
        }),
        case("single_launch_with_partition_requirement_is_refused", move |ctx| {
            // Bound in this order so the region is destroyed before its spaces.
            let TestRegion {
                space,
                _field_space,
                region,
                fields,
            } = TestRegion::new(ctx, 0..=9)?;
            let partition = ctx.partition_equal(*space, 2)?;
            let lp = ctx.logical_partition(*region, *partition);
            let launch =
                ctx.execute(&TaskLauncher::new(fill, &fields)?.region(RegionRequirement::partition(lp, *region, Privilege::ReadWrite)));
            check(
                matches!(launch, Err(Error::InvalidArgument(_))),
                "partition requirement on a single launch accepted",
            )
        }),
    ];
    run(&[], cases)
}
