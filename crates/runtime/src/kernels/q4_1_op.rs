//! `ce_collm.Q4_1MatMul` registered with ONNX Runtime: reads its attributes once, and each run
//! quantizes the activations and splits the output rows over ONNX Runtime's own thread pool
//! (the session's intra-op threads, so `--threads` holds for this kernel too).

use collm_bundle::graph::q4_1::{BLOCK, BLOCK_BYTES, OP, ROWS};
use ort::{
    operator::{
        ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
        ShapeInferenceContext,
    },
    value::{Shape, SymbolicDimensions, TensorElementType, ValueType},
};

use super::q4_1::{QuantizedRows, matmul_rows};

/// Output rows per task handed to the thread pool: enough work per task (~10 µs at K = 576)
/// that scheduling is noise, small enough that two threads end together.
const ROWS_PER_TASK: usize = 32;

pub struct Q4_1MatMul;

impl Operator for Q4_1MatMul {
    type Kernel<'attr> = Q4_1Kernel;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let attr = |name: &str| {
            ctx.get::<i64>(name)
                .filter(|&v| v > 0)
                .map(|v| v as usize)
                .ok_or_else(|| ort::Error::new(format!("{OP} needs a positive attribute {name}")))
        };
        let (k, n) = (attr("K")?, attr("N")?);
        if k % BLOCK != 0 {
            return Err(ort::Error::new(format!("{OP}: K = {k} is not a multiple of {BLOCK}")));
        }
        if n % ROWS != 0 {
            return Err(ort::Error::new(format!(
                "{OP}: N = {n} is odd, but rows are stored in pairs"
            )));
        }
        let batches = crate::ort_env::intra_threads().max(1);
        Ok(Q4_1Kernel { k, n, batches, x: QuantizedRows::default() })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let n: i64 = ctx.attr("N")?;
        let inputs = ctx.inputs();
        let Some(ValueType::Tensor { shape, dimension_symbols, .. }) = inputs.first() else {
            return Ok(());
        };
        let mut dims: Vec<i64> = shape.iter().copied().collect();
        let mut symbols: Vec<String> = dimension_symbols.iter().cloned().collect();
        if let (Some(d), Some(s)) = (dims.last_mut(), symbols.last_mut()) {
            (*d, *s) = (n, String::new());
        }
        ctx.set_output(
            0,
            &ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape: Shape::new(dims),
                dimension_symbols: SymbolicDimensions::new(symbols),
            },
        )
    }
}

pub struct Q4_1Kernel {
    k: usize,
    n: usize,
    /// Batches the tasks are split into: one per thread of the pool. A batch per task costs
    /// more in the pool's scheduling than small matrices take to compute.
    batches: usize,
    /// The last run's quantized activations; kept so a decode step allocates nothing.
    x: QuantizedRows,
}

/// The output buffer shared by the thread pool's tasks; each task writes its own columns.
struct Out(*mut f32);
// SAFETY: tasks write disjoint output elements (see `compute`).
#[allow(unsafe_code)]
unsafe impl Sync for Out {}

impl Out {
    /// # Safety
    /// `i` is inside the output, and no other thread writes element `i`.
    #[allow(unsafe_code)]
    unsafe fn write(&self, i: usize, v: f32) {
        // SAFETY: see the caller's contract.
        unsafe { self.0.add(i).write(v) }
    }
}

impl Kernel for Q4_1Kernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let missing = |what: &str| ort::Error::new(format!("{OP}: no {what}"));
        let x = ctx.input(0)?.ok_or_else(|| missing("activations"))?;
        let (x_shape, x) = x.try_extract_tensor::<f32>()?;
        let w = ctx.input(1)?.ok_or_else(|| missing("weights"))?;
        let (_, w) = w.try_extract_tensor::<u8>()?;
        let (k, n) = (self.k, self.n);
        if x_shape.last() != Some(&(k as i64)) {
            return Err(ort::Error::new(format!(
                "{OP}: activations {x_shape} do not end in K = {k}"
            )));
        }
        if w.len() != n * k / BLOCK * BLOCK_BYTES {
            return Err(ort::Error::new(format!(
                "{OP}: {} weight bytes, but N = {n}, K = {k} needs {}",
                w.len(),
                n * k / BLOCK * BLOCK_BYTES
            )));
        }
        self.x.quantize(x, k);
        let rows = self.x.rows();
        let mut dims: Vec<i64> = x_shape.iter().copied().collect();
        if let Some(last) = dims.last_mut() {
            *last = n as i64;
        }
        let mut y = ctx.output(0, dims)?.ok_or_else(|| missing("output"))?;
        let (_, y) = y.try_extract_tensor_mut::<f32>()?;
        if y.len() != rows * n {
            return Err(ort::Error::new(format!(
                "{OP}: output of {} values for {rows} × {n}",
                y.len()
            )));
        }
        let out = Out(y.as_mut_ptr());
        let x = &self.x;
        let tasks = n.div_ceil(ROWS_PER_TASK);
        ctx.par_for(tasks, self.batches.min(tasks), |t| {
            let cols = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n);
            // SAFETY: `out` points at the `rows × n` output, alive for the whole `par_for`
            // (`m < rows`, `c < n`); task `t` writes only columns `cols`, no other task's.
            #[allow(unsafe_code)]
            matmul_rows(w, x, cols, |m, c, v| unsafe { out.write(m * n + c, v) });
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use collm_bundle::graph::ONNX_OPSET;
    use collm_bundle::graph::q4_1::{BLOCK, BLOCK_BYTES, DOMAIN, OP};
    use collm_onnx::{Attr, Dim, GraphBuilder, TensorProto, TensorType};
    use ort::session::Session;
    use ort::value::Tensor;

    use super::super::q4_1::{QuantizedRows, matmul, test_activations, test_blocks};

    /// A graph of one `Q4_1MatMul` node over `n` rows of weights, as ONNX Runtime loads it.
    fn session(k: usize, n: usize) -> ort::Result<Session> {
        let mut g = GraphBuilder::new("q4_1");
        let x = g.input("x", TensorType::F32, &[Dim::from("m"), Dim::from(k)]);
        // Whole pairs of rows are generated; an odd `n` keeps the first `n` rows' bytes.
        let row_bytes = k / BLOCK * BLOCK_BYTES;
        let blocks = test_blocks(n.next_multiple_of(2), k);
        let w = g.initializer(TensorProto::u8(
            "w",
            &[n as i64, row_bytes as i64],
            &blocks[..n * row_bytes],
        ));
        let attrs = vec![("K", Attr::Int(k as i64)), ("N", Attr::Int(n as i64))];
        let y = g.op_multi(OP, DOMAIN, &[&x, &w], 1, attrs).remove(0);
        g.output(&y, "y", TensorType::F32, &[Dim::from("m"), Dim::from(n)]);
        let model = collm_bundle::onnx::encode(&g.finish(&[("", ONNX_OPSET), (DOMAIN, 1)], &[]));
        let env = crate::ort_env::environment().expect("ONNX Runtime");
        let domain = super::super::domain()?;
        let mut builder = Session::builder(env)?.with_operators(domain)?;
        super::super::one_at_a_time(|| builder.commit_from_memory(&model))
    }

    #[test]
    fn onnx_runtime_runs_the_node_as_the_kernel_computes() {
        // 40 pairs of rows: three tasks of the pool, the last one short; rows of 18 blocks.
        let (m, k, n) = (3, 576, 80);
        let mut session = session(k, n).expect("a graph of our operator loads");
        let x = test_activations(m, k);
        let feed = Tensor::from_array((vec![m as i64, k as i64], x.clone())).expect("x");
        let out = session.run(ort::inputs!["x" => feed]).expect("runs");
        let (shape, y) = out["y"].try_extract_tensor::<f32>().expect("f32 output");
        assert_eq!(&shape[..], &[m as i64, n as i64]);
        let mut q = QuantizedRows::default();
        q.quantize(&x, k);
        let mut want = vec![0.0; m * n];
        matmul(&test_blocks(n, k), &q, n, &mut want);
        assert_eq!(y, &want[..]);
    }

    #[test]
    fn a_graph_with_an_odd_row_count_is_refused_with_our_message() {
        let Err(err) = session(64, 3) else { panic!("an odd N is refused at load") };
        assert!(err.to_string().contains("N = 3 is odd"), "{err}");
    }
}
