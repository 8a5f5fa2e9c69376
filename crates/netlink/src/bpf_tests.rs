use super::*;

/// `r0 = 0; exit`: what every test program ends with.
fn end(a: &mut Asm) {
    a.op(MOV64_K, 0, 0, 0, TC_ACT_OK as i32);
    a.op(EXIT, 0, 0, 0, 0);
}

#[test]
fn jumps_resolve_to_the_instruction_after_their_label() {
    let mut a = Asm::default();
    let (skip, to_end) = (a.label(), a.label());
    a.jump(JEQ32_K, 4, 0, 7, skip); // 0
    a.op(MOV64_K, 0, 0, 0, 1); // 1
    a.jump(JA, 0, 0, 0, to_end); // 2
    a.place(skip);
    a.op(MOV64_K, 0, 0, 0, 2); // 3
    a.place(to_end);
    end(&mut a); // 4, 5
    let p = a.finish("t").expect("assembles");
    let offs: Vec<i16> = p.insns().iter().map(|i| i.off).collect();
    assert_eq!(offs, [2, 0, 1, 0, 0, 0]);
    // The jump's own operands are kept.
    assert_eq!((p.insns()[0].imm, p.insns()[0].regs), (7, 4));
}

#[test]
fn a_label_never_placed_is_refused() {
    let mut a = Asm::default();
    let nowhere = a.label();
    a.jump(JNE32_K, 4, 0, 0, nowhere);
    end(&mut a);
    assert_eq!(a.finish("t"), Err(AsmError::Unplaced { at: 0 }));
}

#[test]
fn a_label_placed_twice_is_refused() {
    let mut a = Asm::default();
    let l = a.label();
    a.jump(JA, 0, 0, 0, l);
    a.place(l);
    a.op(MOV64_K, 0, 0, 0, 1);
    a.place(l);
    end(&mut a);
    assert_eq!(
        a.finish("t"),
        Err(AsmError::PlacedTwice {
            first: 1,
            second: 2
        })
    );
}

#[test]
fn a_label_past_the_last_instruction_is_refused() {
    let mut a = Asm::default();
    let l = a.label();
    a.jump(JA, 0, 0, 0, l);
    end(&mut a);
    a.place(l);
    assert_eq!(
        a.finish("t"),
        Err(AsmError::PastTheEnd {
            at: 0,
            target: 3,
            last: 2
        })
    );
}

#[test]
fn a_jump_backwards_or_to_itself_is_refused() {
    let mut a = Asm::default();
    let l = a.label();
    a.place(l);
    a.jump(JA, 0, 0, 0, l);
    end(&mut a);
    assert_eq!(a.finish("t"), Err(AsmError::Backward { at: 0, target: 0 }));
}

#[test]
fn an_offset_too_far_for_16_bits_is_refused() {
    // i16::MAX instructions between a jump and its label still fit; one more does not.
    for (between, fits) in [(i16::MAX as usize, true), (i16::MAX as usize + 1, false)] {
        let mut a = Asm::default();
        let far = a.label();
        a.jump(JEQ32_K, 4, 0, 0, far);
        for _ in 0..between {
            a.op(MOV64_K, 0, 0, 0, 0);
        }
        a.place(far);
        end(&mut a);
        let r = a.finish("t");
        if fits {
            assert_eq!(r.expect("fits").insns()[0].off, i16::MAX);
        } else {
            assert_eq!(
                r,
                Err(AsmError::TooFar {
                    at: 0,
                    distance: between
                })
            );
        }
    }
}

#[test]
fn a_jump_without_a_label_is_refused() {
    // Every jump opcode ferry uses, written with a hand-counted offset.
    for code in [JGT_X, JA, JEQ32_K, JNE32_K] {
        let mut a = Asm::default();
        a.op(MOV64_K, 0, 0, 0, 0);
        a.op(code, 4, 0, 1, 0);
        end(&mut a);
        assert_eq!(
            a.finish("t"),
            Err(AsmError::Unlabelled { at: 1, code }),
            "{code:#x}"
        );
    }
    // Call and exit are in the jump class but take no offset.
    let mut a = Asm::default();
    a.op(CALL, 0, 0, 0, 41);
    end(&mut a);
    assert!(a.finish("t").is_ok());
}

#[test]
fn a_program_must_end_with_exit() {
    let mut a = Asm::default();
    a.op(MOV64_K, 0, 0, 0, 0);
    assert_eq!(a.finish("t"), Err(AsmError::NoExit));
    assert_eq!(Asm::default().finish("t"), Err(AsmError::NoExit));
}
